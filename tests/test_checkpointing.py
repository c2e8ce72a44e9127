"""ModelCheckpoint, EarlyStopping, checkpoint errors and loading for analysis (in-process)."""
import os

import pytest
import torch
from torch import nn

from pytorch_lightning import MisconfigurationException, Trainer, checkpoint_io
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.exceptions import CheckpointError

from models import TinyModel, make_loader


class Scripted(TinyModel):
    """validation_end returns the next value of a scripted sequence."""

    def __init__(self, values, key='val_loss', **kwargs):
        super().__init__(**kwargs)
        self.values, self.key, self.calls = list(values), key, 0

    def validation_end(self, outputs):
        if self.trainer.state.stage == 'sanity_check':
            return {self.key: 99.0}
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return {self.key: torch.tensor(value)}


def ckpt_files(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith('.ckpt'))


# ------------------------------------------------------------------------- early stopping
def test_early_stopping_on_scripted_sequence(quiet):
    model = Scripted([1.0, 0.8, 0.85, 0.81, 0.9, 0.1, 0.1], n=16)
    trainer = Trainer(**quiet(max_nb_epochs=10, early_stop_callback=EarlyStopping(patience=2)))
    trainer.fit(model)
    # best 0.8 at epoch 1; epochs 2 and 3 do not improve -> stop after epoch 3
    assert trainer.current_epoch == 3 and trainer.early_stop_callback.stopped_epoch == 3


def test_early_stopping_min_delta_and_max_mode(quiet, capsys):
    model = Scripted([0.5, 0.505, 0.509, 0.7], key='val_acc', n=16)
    es = EarlyStopping(monitor='val_acc', patience=2, min_delta=0.01)
    trainer = Trainer(**quiet(max_nb_epochs=10, early_stop_callback=es))
    trainer.fit(model)
    assert "'val_acc' in 'max' mode" in capsys.readouterr().out
    assert trainer.current_epoch == 2  # +0.005 and +0.009 are below min_delta


def test_early_stopping_respects_min_nb_epochs(quiet):
    model = Scripted([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], n=16)
    trainer = Trainer(**quiet(max_nb_epochs=10, min_nb_epochs=5,
                              early_stop_callback=EarlyStopping(patience=1)))
    trainer.fit(model)
    assert trainer.current_epoch == 4


def test_missing_monitor_key_lists_available_keys(quiet):
    trainer = Trainer(**quiet(early_stop_callback=EarlyStopping(monitor='val_los')))
    with pytest.raises(MisconfigurationException) as err:
        trainer.fit(TinyModel())
    message = str(err.value)
    assert "EarlyStopping(monitor='val_los')" in message and "'val_acc', 'val_loss'" in message


def test_default_callbacks_turn_off_with_a_notice_when_val_loss_is_absent(quiet, capsys):
    trainer = Trainer(**quiet(max_nb_epochs=2, checkpoint_callback=None, early_stop_callback=None))
    trainer.fit(Scripted([0.5, 0.6], key='total_acc'))
    out = capsys.readouterr().out
    assert "EarlyStopping: validation_end returned no 'val_loss'" in out
    assert "the default ModelCheckpoint keeps no best checkpoint (last.ckpt is still written)" in out
    assert "Pass checkpoint_callback=ModelCheckpoint(monitor=...)" in out
    assert trainer.current_epoch == 1
    # the default checkpoint still keeps last.ckpt for resuming
    assert ckpt_files(trainer.checkpoint_callback.filepath) == ['last.ckpt']


def test_bad_mode_is_rejected():
    with pytest.raises(MisconfigurationException, match="mode='mx'"):
        EarlyStopping(mode='mx')


# ------------------------------------------------------------------------- model checkpoint
def test_save_best_only_keeps_one_best_and_last(quiet, tmp_path):
    model = Scripted([1.0, 0.5, 0.7, 0.4], n=16)
    ckpt = ModelCheckpoint(tmp_path / 'c', prefix='run-')
    Trainer(**quiet(max_nb_epochs=4, checkpoint_callback=ckpt, early_stop_callback=False)).fit(model)
    assert ckpt_files(tmp_path / 'c') == ['run-epoch=3-step=8-val_loss=0.4000.ckpt', 'run-last.ckpt']
    assert ckpt.best == pytest.approx(0.4)
    # written at the same save point as last.ckpt: one write, the best file links to it
    assert os.path.samefile(ckpt.best_path, tmp_path / 'c' / 'run-last.ckpt')
    best = checkpoint_io.load(ckpt.best_path)
    assert best['lightning']['callbacks']['ModelCheckpoint']['best'] == pytest.approx(0.4)


def test_save_all_and_period(quiet, tmp_path):
    model = Scripted([1.0, 0.5, 0.7, 0.4], n=16)
    ckpt = ModelCheckpoint(tmp_path / 'c', save_best_only=False, period=2, save_last=False)
    Trainer(**quiet(max_nb_epochs=4, checkpoint_callback=ckpt, early_stop_callback=False)).fit(model)
    names = ckpt_files(tmp_path / 'c')
    assert names == ['epoch=1-step=4-val_loss=0.5000.ckpt', 'epoch=3-step=8-val_loss=0.4000.ckpt']


def test_every_n_steps_refreshes_last_mid_epoch(quiet, tmp_path):
    steps = []

    class Watch(Callback):
        def on_save_point(self, trainer, module):
            checkpoint_io.wait_for_saves()  # saves finish on a background thread
            path = tmp_path / 'c' / 'last.ckpt'
            if path.exists():
                steps.append(checkpoint_io.load(path)['lightning']['trainer_state']['global_step'])

    ckpt = ModelCheckpoint(tmp_path / 'c', every_n_steps=3)
    trainer = Trainer(**quiet(checkpoint_callback=ckpt, early_stop_callback=False,
                              nb_sanity_val_steps=0, callbacks=[Watch()]))
    trainer.fit(TinyModel(n=80, batch_size=8))  # 10 steps in one epoch
    assert sorted(set(steps)) == [3, 6, 9, 10]


def test_checkpoint_filepath_must_be_a_folder(tmp_path):
    with pytest.raises(MisconfigurationException, match='is a folder, not a file name'):
        ModelCheckpoint(tmp_path / 'model.ckpt')


def test_default_checkpoint_goes_into_the_experiment_folder(tmp_path):
    trainer = Trainer(default_save_path=str(tmp_path), progress_bar=False,
                      print_weights_summary=False, max_nb_epochs=1)
    trainer.fit(TinyModel())
    folder = tmp_path / 'lightning_logs' / 'version_0' / 'checkpoints'
    assert trainer.checkpoint_callback.filepath == str(folder)
    assert 'last.ckpt' in ckpt_files(folder) and len(ckpt_files(folder)) == 2


# ------------------------------------------------------------------------- what is saved
def test_checkpoint_contents(quiet, tmp_path):
    import argparse
    model = TinyModel()
    model.hparams = argparse.Namespace(lr=0.05, name='tiny')
    trainer = Trainer(**quiet(checkpoint_callback=ModelCheckpoint(tmp_path / 'c')))
    trainer.fit(model)
    ckpt = checkpoint_io.load(tmp_path / 'c' / 'last.ckpt')
    meta = ckpt['lightning']
    assert set(ckpt) == {'state_dict', 'lightning'}
    assert meta['hparams'] == {'lr': 0.05, 'name': 'tiny'}
    # written at the last batch's validation point (the epoch end adds no second save)
    assert meta['trainer_state']['epoch'] == 0 and meta['position']['batches_done'] == 8
    assert {'python', 'numpy', 'torch'} <= set(meta['rng'])
    assert len(meta['optimizers']) == 1 and meta['optimizers'][0]['state']
    assert {'ModelCheckpoint', 'EarlyStopping'} <= set(meta['callbacks'])
    assert meta['library_version'] and meta['model_class'].endswith('TinyModel')


def test_in_process_resume_matches_uninterrupted(quiet, tmp_path):
    class Dropout(TinyModel):
        def __init__(self):
            super().__init__(n=48, batch_size=8)
            self.layer = nn.Sequential(nn.Dropout(0.5), nn.Linear(32, 2))

        @property
        def tng_dataloader(self):
            return make_loader(48, 8, shuffle=True)

    def trainer(folder, **kw):
        return Trainer(**quiet(max_nb_epochs=3, accumulate_grad_batches=4, val_check_interval=0.5,
                               early_stop_callback=False,
                               checkpoint_callback=ModelCheckpoint(folder, every_n_steps=1), **kw))

    torch.manual_seed(0)
    full = Dropout()
    trainer(tmp_path / 'a').fit(full)

    class Crash(Callback):
        def on_batch_start(self, trainer, module, batch):
            if trainer.state.total_batches == 10:
                raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / 'b', callbacks=[Crash()]).fit(Dropout())
    torch.manual_seed(123)  # a different RNG state: the checkpoint must restore it
    resumed = Dropout()
    trainer(tmp_path / 'b', resume_from_checkpoint=tmp_path / 'b' / 'last.ckpt').fit(resumed)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------- errors
@pytest.fixture
def saved(quiet, tmp_path):
    Trainer(**quiet(checkpoint_callback=ModelCheckpoint(tmp_path / 'c'))).fit(TinyModel())
    return tmp_path / 'c' / 'last.ckpt'


def test_truncated_checkpoint_is_named(saved, tmp_path):
    broken = tmp_path / 'broken.ckpt'
    broken.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        TinyModel.load_from_checkpoint(broken)
    assert str(broken) in str(err.value) and 'truncated' in str(err.value)


def test_not_a_checkpoint(tmp_path):
    plain = tmp_path / 'weights.pt'
    torch.save({'layer.weight': torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a pytorch_lightning checkpoint"):
        checkpoint_io.load(plain)
    junk = tmp_path / 'junk.ckpt'
    junk.write_bytes(b'hello')
    with pytest.raises(CheckpointError, match='junk.ckpt'):
        checkpoint_io.load(junk)
    with pytest.raises(CheckpointError, match='does not exist'):
        checkpoint_io.load(tmp_path / 'missing.ckpt')


def test_checkpoint_of_another_model_lists_mismatches(saved):
    class Other(TinyModel):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(32, 3)
            self.extra = nn.Linear(2, 2)

    with pytest.raises(CheckpointError) as err:
        Other.load_from_checkpoint(saved)
    message = str(err.value)
    assert str(saved) in message and 'TinyModel' in message
    assert "missing keys ['extra.weight', 'extra.bias']" in message
    assert 'layer.weight: checkpoint (2, 32) vs model (3, 32)' in message


def test_resume_with_other_optimizers_is_refused(saved, quiet):
    class TwoOpt(TinyModel):
        def training_step(self, data_batch, batch_nb, optimizer_i):
            return super().training_step(data_batch, batch_nb)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1) for _ in range(2)]

    with pytest.raises(CheckpointError, match='holds 1 optimizers, but configure_optimizers returned 2'):
        Trainer(**quiet(resume_from_checkpoint=saved)).fit(TwoOpt())


def test_reserved_key_in_save_dict(quiet, tmp_path):
    class Greedy(TinyModel):
        def get_save_dict(self):
            return {'state_dict': self.state_dict(), 'lightning': 1}

    with pytest.raises(CheckpointError, match="'lightning' key, which is reserved"):
        Trainer(**quiet(checkpoint_callback=ModelCheckpoint(tmp_path))).fit(Greedy())


# ------------------------------------------------------------------------- loading
def test_load_from_checkpoint_rebuilds_with_hparams(quiet, tmp_path):
    import argparse

    class WithHparams(TinyModel):
        def __init__(self, hparams):
            super().__init__(hparams, lr=hparams.lr)

    model = WithHparams(argparse.Namespace(lr=0.02))
    Trainer(**quiet(checkpoint_callback=ModelCheckpoint(tmp_path / 'c'))).fit(model)
    loaded = WithHparams.load_from_checkpoint(tmp_path / 'c' / 'last.ckpt')
    assert loaded.hparams.lr == 0.02 and loaded.lr == 0.02
    assert torch.equal(loaded.layer.weight, model.layer.weight)


def test_load_from_metrics_reads_test_tube_tags(tmp_path):
    import argparse
    model = TinyModel()
    model.hparams = argparse.Namespace(lr=0.01, depth=3, use_bn=True, name='x')
    trainer = Trainer(default_save_path=str(tmp_path), progress_bar=False,
                      print_weights_summary=False, max_nb_epochs=1)
    trainer.fit(model)
    folder = tmp_path / 'lightning_logs' / 'version_0'
    loaded = TinyModel.load_from_metrics(folder / 'checkpoints' / 'last.ckpt',
                                         folder / 'meta_tags.csv')
    assert vars(loaded.hparams) == {'lr': 0.01, 'depth': 3, 'use_bn': True, 'name': 'x'}
    assert torch.equal(loaded.layer.weight, model.layer.weight)


def test_resume_from_save_point_after_last_batch_of_epoch(quiet, tmp_path):
    """A checkpoint written after an epoch's last batch but before the epoch ended (the
    position the SIGKILL test hit when a background save had not finished yet)."""
    class Shuffled(TinyModel):
        @property
        def tng_dataloader(self):
            return make_loader(48, 8, shuffle=True)

    class SaveAtLastBatch(Callback):
        def on_save_point(self, trainer, module):
            if trainer.current_epoch == 0 and trainer.state.batch_idx == 5 and not trainer._epoch_done:
                trainer.save_checkpoint(tmp_path / 'end_of_batches.ckpt')

    def run(**kw):
        torch.manual_seed(0)
        model = Shuffled(n=48)
        Trainer(**quiet(max_nb_epochs=3, early_stop_callback=False, checkpoint_callback=False,
                        **kw)).fit(model)
        return model

    full = run(callbacks=[SaveAtLastBatch()])
    checkpoint_io.wait_for_saves()
    position = checkpoint_io.load(tmp_path / 'end_of_batches.ckpt')['lightning']['position']
    assert position['batches_done'] == 6 and not position['epoch_complete']
    resumed = run(resume_from_checkpoint=tmp_path / 'end_of_batches.ckpt')
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize('kwargs, text', [
    (dict(period=0), 'ModelCheckpoint(period=0): expected an int >= 1'),
    (dict(every_n_steps=0), 'ModelCheckpoint(every_n_steps=0): expected None or an int >= 1'),
    (dict(filepath=3), 'ModelCheckpoint(filepath=3): expected the folder'),
])
def test_model_checkpoint_arguments(kwargs, text):
    with pytest.raises(MisconfigurationException) as err:
        ModelCheckpoint(**kwargs)
    assert text in str(err.value)


def test_save_checkpoint_has_written_its_file_when_it_returns(tmp_path, monkeypatch):
    """A public ``save_checkpoint`` call is durable under its name when it returns, also after
    ``fit`` (then it records the finished epoch: a resume from it starts the next epoch)."""
    real_fsync = os.fsync

    def slow_fsync(fd):  # a slow disk: a save finished on another thread is not done yet
        import time
        time.sleep(0.3)
        real_fsync(fd)
    model = TinyModel(n=16)
    trainer = Trainer(default_save_path=str(tmp_path), progress_bar=False,
                      print_weights_summary=False, max_nb_epochs=2)
    trainer.fit(model)
    path = tmp_path / 'after_fit.ckpt'
    monkeypatch.setattr(checkpoint_io.os, 'fsync', slow_fsync)
    trainer.save_checkpoint(path)
    assert os.path.exists(path)
    loaded = TinyModel.load_from_checkpoint(path)
    assert torch.equal(loaded.layer.weight, model.layer.weight)
    monkeypatch.undo()
    meta = checkpoint_io.load(path)['lightning']
    assert meta['position']['epoch_complete'] and meta['trainer_state']['epoch'] == 1

    resumed = TinyModel(n=16)
    trainer = Trainer(default_save_path=str(tmp_path), experiment=False, progress_bar=False,
                      print_weights_summary=False, max_nb_epochs=3, resume_from_checkpoint=path)
    trainer.fit(resumed)
    assert trainer.state.total_batches == 3 * 2  # epoch 2 only: 2 batches of 8


def test_save_checkpoint_before_fit_is_refused(tmp_path):
    with pytest.raises(MisconfigurationException) as err:
        Trainer(experiment=False).save_checkpoint(tmp_path / 'early.ckpt')
    assert 'save_checkpoint' in str(err.value) and 'before fit()' in str(err.value)


def test_resume_restores_a_generator_owned_by_the_sampler(quiet, tmp_path):
    """``DataLoader(sampler=RandomSampler(data, generator=g))``: the shuffle comes from ``g``,
    which only the sampler holds (the rebuilt loader's own ``sampler`` attribute is another
    object), and a mid-epoch resume must still restore it."""
    from torch.utils.data import DataLoader, RandomSampler
    path = tmp_path / 'mid.ckpt'

    class OwnGenerator(TinyModel):
        @property
        def tng_dataloader(self):
            data = make_loader(48, 8).dataset
            sampler = RandomSampler(data, generator=torch.Generator().manual_seed(0))
            return DataLoader(data, batch_size=8, sampler=sampler)

    class SaveMidEpoch(Callback):
        def on_save_point(self, trainer, module):
            where = trainer.current_epoch, trainer.state.batch_idx, trainer._epoch_done
            if where == (1, 2, False):
                trainer.save_checkpoint(path)

    def run(**kw):
        torch.manual_seed(0)
        model = OwnGenerator(n=48)
        Trainer(**quiet(max_nb_epochs=3, early_stop_callback=False, checkpoint_callback=False,
                        **kw)).fit(model)
        return model

    full = run(callbacks=[SaveMidEpoch()])
    resumed = run(resume_from_checkpoint=path)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_stuck_background_save_times_out_with_a_clear_error(quiet, tmp_path, monkeypatch):
    import threading
    from pytorch_lightning import checkpoint_io
    trainer = Trainer(**quiet(checkpoint_callback=False))
    trainer.fit(TinyModel())
    release = threading.Event()
    real_fsync = os.fsync
    monkeypatch.setattr(checkpoint_io, 'FINISH_TIMEOUT_S', 0.2)
    monkeypatch.setattr(checkpoint_io.os, 'fsync',
                        lambda fd: release.wait(10) or real_fsync(fd))  # the disk hangs
    trainer.save_checkpoint(tmp_path / 'stuck.ckpt', background=True)
    with pytest.raises(checkpoint_io.CheckpointError, match='not durable after 0 s'):
        checkpoint_io.wait_for_saves()
    assert not (tmp_path / 'stuck.ckpt').exists()  # still under its temporary name
    release.set()  # the disk recovers: the save finishes, nothing is left waiting
    monkeypatch.setattr(checkpoint_io, 'FINISH_TIMEOUT_S', 30)
    checkpoint_io.wait_for_saves()
    assert (tmp_path / 'stuck.ckpt').exists()


def test_peek_reads_the_section_and_says_none_for_anything_else(quiet, tmp_path):
    """checkpoint_io.peek / batches_done: a checkpoint's section and its batch count; None
    (never an exception) for a missing, torn, foreign or non-torch file."""
    trainer = Trainer(**quiet(max_nb_epochs=1))
    trainer.fit(TinyModel())
    good = str(tmp_path / 'good.ckpt')
    trainer.save_checkpoint(good)
    section = checkpoint_io.peek(good)
    assert section['trainer_state']['total_batches'] == trainer.state.total_batches > 0
    assert checkpoint_io.batches_done(good) == trainer.state.total_batches
    torn = tmp_path / 'torn.ckpt'
    torn.write_bytes(open(good, 'rb').read()[:200])
    foreign = str(tmp_path / 'foreign.ckpt')
    torch.save({'state_dict': TinyModel().state_dict()}, foreign)
    text = tmp_path / 'text.ckpt'
    text.write_text('not a checkpoint')
    for path in (tmp_path / 'missing.ckpt', torn, foreign, text, tmp_path):
        assert checkpoint_io.peek(path) is None, path
        assert checkpoint_io.batches_done(path) is None, path


def test_durable_replace_puts_the_file_in_place_and_raises_for_a_missing_one(tmp_path):
    from pytorch_lightning.utilities import durable_replace
    target, tmp = tmp_path / 'a.ckpt', tmp_path / '.a.ckpt.1.tmp'
    target.write_text('old')
    tmp.write_text('new')
    durable_replace(str(tmp), str(target))
    assert target.read_text() == 'new' and not tmp.exists()
    with pytest.raises(FileNotFoundError):
        durable_replace(str(tmp), str(target))
    assert target.read_text() == 'new'

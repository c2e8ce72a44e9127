"""Loop fixes: every optimizer's log dict, hooks assigned on the instance, bare tensors from
validation_step/test_step, batch-size-weighted default means, unwritable folders found before
the first batch, and the resume hint printed on Ctrl-C."""
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pytorch_lightning import RootModule, Trainer
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.exceptions import MisconfigurationException
from pytorch_lightning.utilities import StepOutputs, batch_size_of

from models import TinyModel, make_loader


class Capture(Callback):
    """Keeps a copy of what the trainer exposes after every training batch."""

    def __init__(self):
        self.logs, self.metrics = [], []

    def on_batch_end(self, trainer, module):
        self.logs.append(dict(trainer.last_log))
        self.metrics.append(trainer.callback_metrics)


# ------------------------------------------------------------- 7: log dicts, several optimizers
class TwoOptimizers(RootModule):
    """A GAN-shaped model: each optimizer's step logs its own loss under its own name."""

    def __init__(self):
        super().__init__()
        self.g, self.d = nn.Linear(32, 2), nn.Linear(32, 2)

    def training_step(self, data_batch, batch_nb, optimizer_i):
        x, y = data_batch
        net = self.g if optimizer_i == 0 else self.d
        loss = nn.functional.cross_entropy(net(x), y)
        name = 'g_loss' if optimizer_i == 0 else 'd_loss'
        return {'loss': loss, 'prog': {f'{name}_bar': loss}, 'log': {name: loss}}

    def configure_optimizers(self):
        return [torch.optim.SGD(self.g.parameters(), lr=0.1),
                torch.optim.SGD(self.d.parameters(), lr=0.1)]

    @property
    def tng_dataloader(self):
        return make_loader(16, 8)


def test_every_optimizers_log_dict_reaches_last_log_and_callback_metrics(quiet):
    capture = Capture()
    trainer = Trainer(**quiet(callbacks=[capture]))
    trainer.fit(TwoOptimizers())
    assert len(capture.logs) == 2
    for log, metrics in zip(capture.logs, capture.metrics):
        assert set(log) == {'g_loss', 'd_loss'}
        assert {'g_loss', 'd_loss', 'g_loss_bar', 'd_loss_bar'} <= set(metrics)
    assert set(trainer.last_log) == {'g_loss', 'd_loss'}


# ------------------------------------------------------------- 8: hooks assigned on the instance
def _recorder(calls, name):
    def hook():  # seed style: no arguments
        calls.append(name)
    return hook


def test_instance_hooks_without_arguments_are_called(quiet):
    calls = []
    model = TinyModel(n=16)
    for name in ('on_sanity_check_start', 'on_epoch_start', 'on_batch_start', 'on_after_backward',
                 'on_before_zero_grad', 'on_batch_end', 'on_pre_performance_check',
                 'on_post_performance_check', 'on_epoch_end'):
        setattr(model, name, _recorder(calls, name))
    Trainer(**quiet(nb_sanity_val_steps=1)).fit(model)
    assert calls.count('on_sanity_check_start') == 1
    assert calls.count('on_epoch_start') == calls.count('on_epoch_end') == 1
    for name in ('on_batch_start', 'on_after_backward', 'on_before_zero_grad', 'on_batch_end'):
        assert calls.count(name) == 2, name  # 2 training batches
    # the sanity check and the epoch's validation
    assert calls.count('on_pre_performance_check') == calls.count('on_post_performance_check') == 2


def test_instance_hooks_with_classic_arguments_get_them(quiet):
    batches, optimizers = [], []
    model = TinyModel(n=16)
    model.on_batch_start = lambda batch: batches.append(batch)
    model.on_before_zero_grad = lambda optimizer: optimizers.append(optimizer)
    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.fit(model)
    assert len(batches) == 2 and all(isinstance(b[0], torch.Tensor) for b in batches)
    assert optimizers == trainer.optimizers * 2


def test_instance_on_batch_start_returning_minus_one_ends_the_epoch(quiet):
    model = TinyModel(n=32)
    model.on_batch_start = lambda batch: -1 if model.trainer.state.batch_idx == 1 else None
    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.fit(model)
    assert trainer.state.total_batches == 1


def test_instance_optimizer_step_replaces_the_step(quiet):
    calls = []

    def optimizer_step(epoch_nb, batch_nb, optimizer, optimizer_i):
        calls.append((epoch_nb, batch_nb, optimizer_i))
        optimizer.step()

    model = TinyModel(n=16)
    before = model.layer.weight.detach().clone()
    model.optimizer_step = optimizer_step
    Trainer(**quiet(nb_sanity_val_steps=0)).fit(model)
    assert calls == [(0, 0, 0), (0, 1, 0)]
    assert not torch.equal(before, model.layer.weight)


@pytest.mark.parametrize('name, fn, expected', [
    ('on_batch_start', lambda a, b: None, 'def on_batch_start(batch)'),
    ('on_epoch_start', lambda a: None, 'def on_epoch_start()'),
    ('optimizer_step', lambda optimizer: None,
     'def optimizer_step(epoch_nb, batch_nb, optimizer, optimizer_i)'),
])
def test_instance_hook_with_wrong_arity_is_refused_before_training(quiet, name, fn, expected):
    model = TinyModel(n=16)
    setattr(model, name, fn)
    model.training_step = lambda *a: pytest.fail('training ran')
    with pytest.raises(MisconfigurationException) as err:
        Trainer(**quiet()).fit(model)
    message = str(err.value)
    assert f'{name} assigned on the TinyModel instance' in message and expected in message


def test_class_optimizer_step_with_wrong_arity_is_refused(quiet):
    class Wrong(TinyModel):
        def optimizer_step(self, optimizer):
            optimizer.step()

    with pytest.raises(MisconfigurationException, match=r'Wrong\.optimizer_step requires 1'):
        Trainer(**quiet()).fit(Wrong())


# ------------------------------------------------------------------ 9: bare tensors from eval steps
class BareLoss(TinyModel):
    def validation_step(self, data_batch, batch_nb):
        x, y = data_batch
        return nn.functional.cross_entropy(self(x), y)

    def test_step(self, data_batch, batch_nb):
        return self.validation_step(data_batch, batch_nb)


def _mean_loss(model, loader):
    with torch.no_grad():
        x, y = loader.dataset.tensors
        return nn.functional.cross_entropy(model(x), y)


def test_bare_scalar_from_validation_step_is_val_loss(quiet):
    model = BareLoss(n=16)
    trainer = Trainer(**quiet(nb_sanity_val_steps=0, early_stop_callback=False))
    trainer.fit(model)
    torch.testing.assert_close(trainer.val_metrics['val_loss'],
                               _mean_loss(model, model.val_dataloader))


def test_bare_scalar_from_test_step_is_test_loss(quiet):
    model = BareLoss(n=16)
    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.fit(model)
    metrics = trainer.test()
    assert set(metrics) == {'test_loss'}
    torch.testing.assert_close(metrics['test_loss'], _mean_loss(model, model.test_dataloader))


def test_own_validation_end_still_gets_the_raw_tensors(quiet):
    class Stacking(BareLoss):
        def validation_end(self, outputs):
            return {'val_loss': torch.stack(outputs).mean(), 'n': len(outputs)}

    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.fit(Stacking(n=16))
    assert trainer.val_metrics['n'] == 4


def test_bare_non_scalar_output_is_refused_by_the_default_end(quiet):
    class Predictions(TinyModel):
        def validation_step(self, data_batch, batch_nb):
            return self(data_batch[0]).argmax(1)

    with pytest.raises(MisconfigurationException, match=r'shape \(8,\).*override validation_end'):
        Trainer(**quiet(nb_sanity_val_steps=0)).fit(Predictions(n=16))


# ------------------------------------------------------------------ 10: batch-size-weighted means
class UnevenBatches(TinyModel):
    """270 validation and test samples in batches of 256 and 14; the last 14 labels are flipped,
    so the small batch's accuracy is far from the large one's."""

    def _loader(self):
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(270, 32, generator=gen)
        y = (x[:, 0] > 0).long()
        y[256:] = 1 - y[256:]
        return DataLoader(TensorDataset(x, y), batch_size=256)

    val_dataloader = property(_loader)
    test_dataloader = property(_loader)

    def test_step(self, data_batch, batch_nb):
        return {'test_acc': self.validation_step(data_batch, batch_nb)[1]['val_acc']}


def _accuracy(model, loader):
    with torch.no_grad():
        x, y = loader.dataset.tensors
        return (model(x).argmax(1) == y).float().mean()


def test_default_validation_end_and_test_end_weight_by_batch_size(quiet):
    model = UnevenBatches(n=64, lr=0.5)
    trainer = Trainer(**quiet(nb_sanity_val_steps=0, early_stop_callback=False))
    trainer.fit(model)
    true_acc = _accuracy(model, model.val_dataloader)
    per_batch = [_accuracy(model, DataLoader(TensorDataset(*t))) for t in (
        [d[:256] for d in model.val_dataloader.dataset.tensors],
        [d[256:] for d in model.val_dataloader.dataset.tensors])]
    assert abs(sum(per_batch) / 2 - true_acc) > 0.01  # an unweighted mean would be visibly off
    torch.testing.assert_close(trainer.val_metrics['val_acc'], true_acc)
    torch.testing.assert_close(trainer.test()['test_acc'], true_acc)


def test_default_end_weights_come_with_the_outputs():
    outputs = StepOutputs([{'acc': torch.tensor(1.0), 'n': 2}, {'acc': torch.tensor(0.0), 'n': 4}],
                          batch_sizes=[3, 1])
    metrics = RootModule().validation_end(outputs)
    torch.testing.assert_close(metrics['acc'], torch.tensor(0.75))
    assert metrics['n'] == pytest.approx(2.5)
    # a plain list (a user calling it by hand) weighs every output the same
    metrics = RootModule().validation_end(list(outputs))
    torch.testing.assert_close(metrics['acc'], torch.tensor(0.5))


def test_batch_size_is_dim_0_of_the_first_tensor_found():
    assert batch_size_of((torch.zeros(5, 3), torch.zeros(7))) == 5
    assert batch_size_of({'meta': 'a', 'x': [torch.tensor(1.0), torch.zeros(4, 2)]}) == 4
    assert batch_size_of(['no', 'tensors', 3]) is None
    assert batch_size_of(torch.zeros(6)) == 6


# ------------------------------------------------------------------ 11: unwritable folders
class Counting(TinyModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = 0

    def training_step(self, data_batch, batch_nb):
        self.steps += 1
        return super().training_step(data_batch, batch_nb)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / 'plain_file'
    path.write_text('not a folder')
    return path


def test_default_save_path_under_a_file_is_refused_before_training(quiet, a_file):
    model = Counting(n=16)
    trainer = Trainer(**quiet(default_save_path=str(a_file / 'run')))
    with pytest.raises(MisconfigurationException) as err:
        trainer.fit(model)
    message = str(err.value)
    assert 'Trainer(default_save_path=' in message and str(a_file) in message
    assert 'is a file' in message
    assert model.steps == 0


def test_default_logs_under_a_file_are_refused_before_training(quiet, a_file):
    model = Counting(n=16)
    trainer = Trainer(**quiet(default_save_path=str(a_file / 'run'), experiment=None,
                              checkpoint_callback=False))
    with pytest.raises(MisconfigurationException, match='Trainer\\(default_save_path='):
        trainer.fit(model)
    assert model.steps == 0


def test_checkpoint_folder_under_a_file_is_refused_before_training(quiet, a_file):
    model = Counting(n=16)
    ckpt = ModelCheckpoint(filepath=str(a_file / 'ckpts'))
    with pytest.raises(MisconfigurationException) as err:
        Trainer(**quiet(checkpoint_callback=ckpt)).fit(model)
    assert 'ModelCheckpoint(filepath=' in str(err.value) and str(a_file) in str(err.value)
    assert model.steps == 0


def test_an_unused_default_save_path_is_not_checked(quiet, a_file):
    # no logger, no checkpoints: nothing is ever written under default_save_path
    model = Counting(n=16)
    Trainer(**quiet(default_save_path=str(a_file / 'run'), checkpoint_callback=False)).fit(model)
    assert model.steps == 2


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0,
                    reason='root writes into read-only folders')
def test_read_only_folder_is_refused_before_training(quiet, tmp_path):
    folder = tmp_path / 'read_only'
    folder.mkdir()
    folder.chmod(0o500)
    try:
        model = Counting(n=16)
        with pytest.raises(MisconfigurationException, match='not writable'):
            Trainer(**quiet(default_save_path=str(folder / 'run'))).fit(model)
        assert model.steps == 0
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------ Ctrl-C
class StopsOnBatch(TinyModel):
    def __init__(self, stop_at, **kwargs):
        super().__init__(**kwargs)
        self.stop_at = stop_at

    def training_step(self, data_batch, batch_nb):
        if self.trainer.state.total_batches == self.stop_at:
            raise KeyboardInterrupt
        return super().training_step(data_batch, batch_nb)


def test_ctrl_c_names_the_last_checkpoint_and_how_to_resume(quiet, tmp_path, capsys):
    trainer = Trainer(**quiet(max_nb_epochs=3, nb_sanity_val_steps=0, early_stop_callback=False))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(StopsOnBatch(stop_at=3, n=16))  # epoch 0 (2 batches) wrote last.ckpt
    path = os.path.join(str(tmp_path), 'checkpoints', 'last.ckpt')
    assert trainer.checkpoint_callback.last_path == path and os.path.isfile(path)
    err = capsys.readouterr().err
    assert f'The last checkpoint is {path}' in err
    assert f"Trainer(resume_from_checkpoint='{path}')" in err
    # the hint is exact: that argument resumes the run
    resumed = Trainer(**quiet(max_nb_epochs=3, nb_sanity_val_steps=0, early_stop_callback=False,
                              resume_from_checkpoint=path))
    resumed.fit(StopsOnBatch(stop_at=-1, n=16))
    assert resumed.state.total_batches == 6


def test_ctrl_c_before_any_checkpoint_says_so(quiet, capsys):
    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(StopsOnBatch(stop_at=1, n=16))
    assert 'Interrupted. No checkpoint was written' in capsys.readouterr().err


# ------------------------------------------------------------------ classic names (issue 9)
def test_data_loader_decorator_is_lazy_and_memoised(quiet):
    from pytorch_lightning import data_loader
    calls = []

    class Lazy(TinyModel):
        @data_loader
        def tng_dataloader(self):
            calls.append(1)
            return make_loader(64, 8)

    model = Lazy()
    assert calls == []                                   # nothing built until asked
    assert model.tng_dataloader is model.tng_dataloader  # the same loader every time
    Trainer(**quiet(nb_sanity_val_steps=0)).fit(model)
    Trainer(**quiet(nb_sanity_val_steps=0)).fit(model)
    assert calls == [1]


def test_on_tng_metrics_changes_the_logged_row(tmp_path):
    import csv

    class Renames(TinyModel):
        def on_tng_metrics(self, metrics):
            metrics['doubled_loss'] = 2 * metrics.pop('train_loss')

    Trainer(default_save_path=str(tmp_path), progress_bar=False, print_weights_summary=False,
            max_nb_epochs=1, add_log_row_interval=2, nb_sanity_val_steps=0).fit(Renames())
    with open(tmp_path / 'lightning_logs' / 'version_0' / 'metrics.csv') as f:
        rows = [r for r in csv.DictReader(f) if r.get('loss')]
    assert len(rows) == 4 and all(r['doubled_loss'] and not r.get('train_loss') for r in rows)
    assert all(float(r['doubled_loss']) == pytest.approx(2 * float(r['loss'])) for r in rows)


def test_test_ckpt_path_best_path_and_current_weights(quiet, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint
    ckpt = ModelCheckpoint(tmp_path / 'c', mode='min')
    trainer = Trainer(**quiet(max_nb_epochs=3, checkpoint_callback=ckpt))
    model = TinyModel()
    trainer.fit(model)
    best_model = TinyModel.load_from_checkpoint(ckpt.best_path)
    expected = Trainer(**quiet()).test(best_model)['test_acc']
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # the current weights are now useless
    assert trainer.test(ckpt_path='best')['test_acc'] == expected
    assert trainer.test(ckpt_path=ckpt.best_path)['test_acc'] == expected
    with pytest.raises(MisconfigurationException, match='no such file'):
        trainer.test(ckpt_path=tmp_path / 'missing.ckpt')
    no_best = Trainer(**quiet(checkpoint_callback=False))
    no_best.fit(TinyModel())
    with pytest.raises(MisconfigurationException, match="ckpt_path='best'"):
        no_best.test(ckpt_path='best')


def test_load_from_metrics_on_gpu_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    Trainer(default_save_path=str(tmp_path), progress_bar=False, print_weights_summary=False,
            max_nb_epochs=1).fit(TinyModel())
    folder = tmp_path / 'lightning_logs' / 'version_0'
    with pytest.raises(MisconfigurationException, match='on_gpu=False'):
        TinyModel.load_from_metrics(folder / 'checkpoints' / 'last.ckpt',
                                    folder / 'meta_tags.csv', on_gpu=True)
    model = TinyModel.load_from_metrics(folder / 'checkpoints' / 'last.ckpt',
                                        folder / 'meta_tags.csv')
    assert next(model.parameters()).device.type == 'cpu'


def test_classic_0_5_forms_run_unchanged(quiet, tmp_path):
    """'progress_bar' in training_step's dict, nested 'log'/'progress_bar' dicts from
    validation_end, on_save_checkpoint / on_load_checkpoint, and the LightningModule name."""
    from pytorch_lightning import LightningModule
    from pytorch_lightning.callbacks import ModelCheckpoint
    assert LightningModule is RootModule

    class Classic(TinyModel):
        loaded = None

        def training_step(self, data_batch, batch_nb):
            loss, _ = super().training_step(data_batch, batch_nb)
            return {'loss': loss, 'progress_bar': {'shown': loss}}

        def validation_end(self, outputs):
            loss = torch.stack([o['val_loss'] for o in outputs]).mean()
            return {'val_loss': loss, 'log': {'logged': loss}, 'progress_bar': {'bar': loss}}

        def on_save_checkpoint(self, checkpoint):
            checkpoint['extra'] = 42

        def on_load_checkpoint(self, checkpoint):
            Classic.loaded = checkpoint['extra']

    trainer = Trainer(**quiet(checkpoint_callback=ModelCheckpoint(tmp_path / 'c')))
    trainer.fit(Classic())
    assert 'shown' in trainer.last_prog
    assert {'val_loss', 'logged', 'bar'} <= set(trainer.val_metrics)
    Trainer(**quiet(max_nb_epochs=2, resume_from_checkpoint=tmp_path / 'c' / 'last.ckpt')).fit(
        Classic())
    assert Classic.loaded == 42


def test_logger_true_or_false_says_to_use_experiment(quiet):
    with pytest.raises(MisconfigurationException, match='experiment=False'):
        Trainer(logger=False)
    with pytest.raises(MisconfigurationException, match='truncated_bptt_steps=0'):
        Trainer(truncated_bptt_steps=0)

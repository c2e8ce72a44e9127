"""The notebook workflow: one long-lived process, cells re-run, several Trainers alive at once,
Ctrl-C in the middle of a fit (a KeyboardInterrupt raised from a callback reaches fit exactly
as a real one does), then more cells. Each test ends by checking that nothing the library
started is left running."""
import gc
import multiprocessing
import os
import re
import threading

import pytest
import torch
from torch.utils.data import DataLoader

from models import TinyModel
from test_logging import logged_kwargs as logging_kwargs  # logging on; no bar, no summary
from pytorch_lightning import Trainer, notebook
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers.test_tube import LOCK_NAME

# the threads the library starts that must end with the fit (or test) that started them
LIBRARY_THREADS = ('lightning-log-writer', 'checkpoint-finisher', 'pl-exit-guard')


@pytest.fixture(autouse=True)
def nothing_left_behind():
    before = set(threading.enumerate())
    yield
    left = [t.name for t in set(threading.enumerate()) - before
            if t.is_alive() and t.name.startswith(LIBRARY_THREADS)]
    assert left == []
    assert multiprocessing.active_children() == []


class CtrlCAt(Callback):
    """Raises KeyboardInterrupt after training batch ``at`` (counted over the whole run)."""

    def __init__(self, at):
        self.at = at

    def on_batch_end(self, trainer, module):
        if trainer.state.total_batches == self.at:
            raise KeyboardInterrupt


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def version_dir(save_path, n):
    return os.path.join(str(save_path), 'lightning_logs', f'version_{n}')


def status_of(save_path, n):
    table = notebook.runs(str(save_path))
    return table.set_index('version').loc[n, 'status']


def test_ctrl_c_then_resume_in_the_same_process(tmp_path, capsys):
    torch.manual_seed(0)
    model = TinyModel()
    trainer = Trainer(**logging_kwargs(tmp_path / 'a', max_nb_epochs=3, callbacks=[CtrlCAt(12)]))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(model)
    # 8 batches per epoch: last.ckpt of epoch 0 is the newest checkpoint at batch 12
    assert status_of(tmp_path / 'a', 0) == 'interrupted'
    assert not os.path.exists(os.path.join(version_dir(tmp_path / 'a', 0), LOCK_NAME))
    assert trainer.logger._thread is None
    hint = capsys.readouterr().err
    found = re.search(r"resume_from_checkpoint='([^']+)'", hint)
    assert found, hint
    path = found.group(1)
    assert os.path.isfile(path)

    torch.manual_seed(1)  # the resumed run takes every random state from the checkpoint
    resumed = TinyModel()
    Trainer(**logging_kwargs(tmp_path / 'a', max_nb_epochs=3,
                             resume_from_checkpoint=path)).fit(resumed)

    torch.manual_seed(0)
    straight = TinyModel()
    Trainer(**logging_kwargs(tmp_path / 'b', max_nb_epochs=3)).fit(straight)
    got, want = weights(resumed), weights(straight)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_rerunning_a_cell_makes_a_new_version(tmp_path):
    first = Trainer(**logging_kwargs(tmp_path))
    first.fit(TinyModel(lr=0.05))
    second = Trainer(**logging_kwargs(tmp_path))  # the cell again; `first` still referenced
    second.fit(TinyModel(lr=0.01))
    assert first.logger.version == 0 and second.logger.version == 1
    metrics = [notebook.metrics(version_dir(tmp_path, n)) for n in (0, 1)]
    for table in metrics:  # 2 epochs of 8 batches each, every run in its own file
        assert table['epoch'].max() == 1 and len(table) > 0
    assert not metrics[0]['train_loss'].equals(metrics[1]['train_loss'])

    table = notebook.runs(str(tmp_path))
    assert list(table['version']) == [0, 1]
    assert list(table['status']) == ['finished', 'finished']
    for _, row in table.iterrows():
        assert row['best_checkpoint'].startswith(row['log_dir'] + os.sep)
        loaded = notebook.load_best(row, TinyModel)
        saved = torch.load(row['best_checkpoint'], map_location='cpu', weights_only=False)
        state = saved['state_dict']
        assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    # each version's best is its own run's weights, not the other's
    bests = [notebook.load_best(row, TinyModel).layer.weight for _, row in table.iterrows()]
    assert not torch.equal(bests[0], bests[1])


def file_list(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def test_two_trainers_interleaved_write_only_their_own_folders(tmp_path):
    a = Trainer(**logging_kwargs(tmp_path / 'a', max_nb_epochs=1))
    b = Trainer(**logging_kwargs(tmp_path / 'b', max_nb_epochs=1))
    a.fit(TinyModel())
    b.fit(TinyModel())
    a.test()
    b.test()
    b_files = file_list(tmp_path / 'b')
    a.fit(TinyModel())
    assert os.listdir(tmp_path) == ['a', 'b'] or sorted(os.listdir(tmp_path)) == ['a', 'b']
    assert file_list(tmp_path / 'b') == b_files  # A's second fit wrote nothing into B's
    a_files = file_list(tmp_path / 'a')
    assert all(f.startswith(os.path.join('lightning_logs', 'version_')) for f in a_files)
    assert {f.split(os.sep)[1] for f in a_files} == {'version_0', 'version_1'}
    assert {f.split(os.sep)[1] for f in b_files} == {'version_0'}
    # the test rows went to each trainer's own metrics.csv
    for root in (tmp_path / 'a', tmp_path / 'b'):
        assert 'test_acc' in notebook.metrics(version_dir(root, 0)).columns
    assert 'test_acc' not in notebook.metrics(version_dir(tmp_path / 'a', 1)).columns


class BuggyModel(TinyModel):
    """A user bug at training batch 5 of the run; ``fixed=True`` is the corrected cell."""
    fixed = False

    def training_step(self, data_batch, batch_nb):
        if not self.fixed and self.trainer.state.total_batches == 5:
            raise ValueError('user bug')
        return super().training_step(data_batch, batch_nb)


def test_a_failed_fit_then_the_fixed_model_on_the_same_trainer(tmp_path):
    trainer = Trainer(**logging_kwargs(tmp_path))
    with pytest.raises(ValueError, match='user bug'):
        trainer.fit(BuggyModel())
    assert not os.path.exists(os.path.join(version_dir(tmp_path, 0), LOCK_NAME))
    fixed = BuggyModel()
    fixed.fixed = True
    trainer.fit(fixed)
    assert trainer.logger.version == 1
    assert status_of(tmp_path, 0) == 'failed'
    assert status_of(tmp_path, 1) == 'finished'
    assert notebook.metrics(version_dir(tmp_path, 1))['epoch'].max() == 1


def test_save_after_fit_then_test_from_that_file_on_a_new_trainer(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(**logging_kwargs(tmp_path))
    model = TinyModel()
    trainer.fit(model)
    path = str(tmp_path / 'after_fit.ckpt')
    trainer.save_checkpoint(path)
    expected = trainer.test()

    loaded = TinyModel.load_from_checkpoint(path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    other = Trainer(**logging_kwargs(tmp_path / 'other'))
    torch.manual_seed(5)
    got = other.test(TinyModel(), ckpt_path=path)
    assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in expected.items()}
    assert {k: float(v) for k, v in other.test(loaded).items()} == \
        {k: float(v) for k, v in expected.items()}


def test_progress_bar_closed_by_ctrl_c(tmp_path, capsys):
    from tqdm import tqdm
    trainer = Trainer(**logging_kwargs(tmp_path, experiment=False, progress_bar=True,
                                       callbacks=[CtrlCAt(3)]))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(TinyModel())
    assert len(getattr(tqdm, '_instances', ())) == 0  # closed: tqdm keeps no line for it
    err = capsys.readouterr().err
    # the bar's line was ended before the resume hint, which starts a line of its own
    assert 'Epoch 0' in err
    assert any(line.startswith('Interrupted.') for line in err.split('\n')), err
    assert err.endswith('\n')
    Trainer(**logging_kwargs(tmp_path, experiment=False, progress_bar=True)).fit(TinyModel())
    assert len(getattr(tqdm, '_instances', ())) == 0
    err = capsys.readouterr().err
    assert 'Epoch 1' in err and err.endswith('\n')


class CtrlCInEvaluation(TinyModel):
    """Ctrl-C at batch 2 of the first validation after the sanity check, or of test()."""

    def validation_step(self, data_batch, batch_nb):
        if self.trainer.state.stage != 'sanity_check' and batch_nb == 2:
            raise KeyboardInterrupt
        return super().validation_step(data_batch, batch_nb)

    def test_step(self, data_batch, batch_nb):
        if batch_nb == 2:
            raise KeyboardInterrupt
        return super().test_step(data_batch, batch_nb)


def test_ctrl_c_in_validation_or_test_leaves_the_model_in_train_mode(tmp_path):
    # a notebook goes on using the model: an interrupted evaluation must not leave it in
    # eval mode (dropout and batch norm would silently behave differently afterwards)
    model = CtrlCInEvaluation()
    trainer = Trainer(**logging_kwargs(tmp_path, experiment=False, checkpoint_callback=False))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(model)
    assert model.training
    with pytest.raises(KeyboardInterrupt):
        trainer.test(model)
    assert model.training
    model.eval()  # and a model the user put in eval mode stays there
    with pytest.raises(KeyboardInterrupt):
        trainer.test(model)
    assert not model.training


class WorkersModel(CtrlCInEvaluation):
    """Training and validation loaders with 2 worker processes each."""

    def __init__(self, persistent, ctrl_c_in_validation):
        super().__init__()
        self.persistent, self.ctrl_c_in_validation = persistent, ctrl_c_in_validation

    def _with_workers(self, loader):
        return DataLoader(loader.dataset, batch_size=8, num_workers=2,
                          persistent_workers=self.persistent)

    @property
    def tng_dataloader(self):
        return self._with_workers(super().tng_dataloader)

    @property
    def val_dataloader(self):
        return self._with_workers(super().val_dataloader)

    def validation_step(self, data_batch, batch_nb):
        if self.ctrl_c_in_validation:
            return super().validation_step(data_batch, batch_nb)
        return TinyModel.validation_step(self, data_batch, batch_nb)


@pytest.mark.parametrize('persistent, in_validation',
                         [(False, False), (True, False), (True, True)])
def test_ctrl_c_stops_the_loader_workers_while_the_traceback_is_kept(tmp_path, persistent,
                                                                      in_validation):
    # a notebook keeps the last exception (sys.last_value) and with it the frames that hold
    # the interrupted loader iterator: its worker processes must not live on with it
    model = WorkersModel(persistent, in_validation)
    callbacks = [] if in_validation else [CtrlCAt(3)]
    trainer = Trainer(**logging_kwargs(tmp_path, experiment=False, checkpoint_callback=False,
                                       callbacks=callbacks))
    with pytest.raises(KeyboardInterrupt) as kept:
        trainer.fit(model)
    assert kept.value.__traceback__ is not None
    assert multiprocessing.active_children() == []
    model.ctrl_c_in_validation = False  # the next cell: the same loaders work again
    for callback in callbacks:
        callback.at = None
    trainer.fit(model)
    assert trainer.state.total_batches == 16
    # by design the user's own persistent loaders keep their workers while referenced (the
    # trainer holds the validation loader): they stop with the trainer
    del kept, trainer, model
    gc.collect()

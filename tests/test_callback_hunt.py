"""Callbacks as researchers use them: early stopping across resumes, ModelCheckpoint files
across runs and folders, user callbacks with their own state."""
import os

import pytest
import torch

from pytorch_lightning import MisconfigurationException, Trainer, checkpoint_io
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint

from models import TinyModel


class Scripted(TinyModel):
    """validation_end returns the next value of a scripted sequence (99 in the sanity check)."""

    def __init__(self, values, key='val_loss', **kwargs):
        super().__init__(**kwargs)
        self.values, self.key, self.calls = list(values), key, 0

    def validation_end(self, outputs):
        if self.trainer.state.stage == 'sanity_check':
            return {self.key: 99.0}
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return {self.key: torch.tensor(value)}


class Counting(Callback):
    """Counts training batches and epoch ends; keeps its count across a resume."""

    def __init__(self):
        self.batches = self.epochs = 0
        self.loaded = None

    def on_batch_end(self, trainer, module):
        self.batches += 1

    def on_epoch_end(self, trainer, module):
        self.epochs += 1

    def state_dict(self):
        return {'batches': self.batches}

    def load_state_dict(self, state):
        self.loaded = dict(state)
        self.batches = state['batches']


class SaveEverySavePoint(Callback):
    """A user's own checkpointing: one file per save point, numbered."""

    def __init__(self, folder):
        self.folder, self.paths = folder, []

    def on_save_point(self, trainer, module):
        path = os.path.join(self.folder, f'sp{len(self.paths):03d}.ckpt')
        trainer.save_checkpoint(path)
        self.paths.append(path)


def ckpt_files(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith('.ckpt'))


# ------------------------------------------------------------------------- early stopping
def test_resume_from_the_save_point_where_early_stopping_ended_the_run_trains_nothing(
        quiet, tmp_path):
    """The epoch-end save point of the epoch at which early stopping took effect records
    should_stop; the uninterrupted run ended right after it, so a resume from it (say, a
    job killed before fit returned, then requeued) must not train another batch."""
    saver, counter = SaveEverySavePoint(str(tmp_path)), Counting()
    trainer = Trainer(**quiet(max_nb_epochs=10, checkpoint_callback=False,
                              early_stop_callback=EarlyStopping(patience=1),
                              callbacks=[counter, saver]))
    trainer.fit(Scripted([1.0, 2.0, 3.0], n=16))
    assert (trainer.current_epoch, trainer.state.global_step) == (1, 4)
    final = saver.paths[-1]
    assert checkpoint_io.load(final)['lightning']['position']['epoch_complete']

    resumed_counter = Counting()
    resumed = Trainer(**quiet(max_nb_epochs=10, checkpoint_callback=False,
                              early_stop_callback=EarlyStopping(patience=1),
                              callbacks=[resumed_counter], resume_from_checkpoint=final))
    resumed.fit(Scripted([3.0], n=16))
    assert resumed_counter.batches == counter.batches == 4  # restored, none trained
    assert resumed_counter.epochs == 0
    assert (resumed.current_epoch, resumed.state.global_step) == (1, 4)


# ------------------------------------------------------------------------- model checkpoint
def test_resume_into_another_folder_leaves_the_first_runs_best_file(quiet, tmp_path):
    """Forking a run (resume from run A's last.ckpt with a ModelCheckpoint into folder B):
    B's first new best must not delete A's best file, which lives in A's folder."""
    first, second = tmp_path / 'a', tmp_path / 'b'
    Trainer(**quiet(max_nb_epochs=2, checkpoint_callback=ModelCheckpoint(first),
                    early_stop_callback=False)).fit(Scripted([1.0, 0.5], n=16))
    before = ckpt_files(first)
    assert before == ['epoch=1-step=4-val_loss=0.5000.ckpt', 'last.ckpt']

    ckpt = ModelCheckpoint(second)
    Trainer(**quiet(max_nb_epochs=4, checkpoint_callback=ckpt, early_stop_callback=False,
                    resume_from_checkpoint=str(first / "last.ckpt"))).fit(
        Scripted([0.4, 0.3], n=16))
    assert ckpt_files(first) == before
    # in its own folder it still keeps one best file
    assert ckpt_files(second) == ['epoch=3-step=8-val_loss=0.3000.ckpt', 'last.ckpt']
    assert ckpt.best_path == str(second / 'epoch=3-step=8-val_loss=0.3000.ckpt')


class LossAndAcc(TinyModel):
    """val_loss and val_acc per epoch, from fixed lists (the epoch is the index)."""

    losses = [1.0, 0.5, 0.7, 0.6, 0.6]
    accs = [0.1, 0.2, 0.3, 0.4, 0.5]

    def validation_end(self, outputs):
        if self.trainer.state.stage == 'sanity_check':
            return {'val_loss': 9.0, 'val_acc': 0.0}
        epoch = self.trainer.current_epoch
        return {'val_loss': self.losses[epoch], 'val_acc': self.accs[epoch]}


def test_resume_with_another_monitored_metric_starts_its_best_afresh(quiet, tmp_path):
    """Fine-tuning from a run that kept the best val_loss, now keeping the best val_acc: the
    restored state is another metric's (a loss value, 'min' mode), so it is not taken over:
    val_acc is maximised from its own first value."""
    first = tmp_path / 'a'
    Trainer(**quiet(max_nb_epochs=2, checkpoint_callback=ModelCheckpoint(first),
                    early_stop_callback=EarlyStopping(patience=5))).fit(LossAndAcc(n=16))
    ckpt, stop = ModelCheckpoint(tmp_path / 'b', monitor='val_acc'), EarlyStopping('val_acc')
    Trainer(**quiet(max_nb_epochs=5, checkpoint_callback=ckpt, early_stop_callback=stop,
                    resume_from_checkpoint=str(first / 'last.ckpt'))).fit(LossAndAcc(n=16))
    assert ckpt.monitor.mode == stop.monitor.mode == 'max'
    assert ckpt.best == stop.best == 0.5 and stop.wait == 0
    assert ckpt_files(tmp_path / 'b') == ['epoch=4-step=10-val_acc=0.5000.ckpt', 'last.ckpt']
    # the same metric on both sides is restored as before
    saved = checkpoint_io.load(first / 'last.ckpt')['lightning']['callbacks']
    assert saved['ModelCheckpoint']['monitor'] == 'val_loss'
    assert saved['ModelCheckpoint']['best'] == saved['EarlyStopping']['best'] == 0.5


def test_an_explicit_checkpoint_is_not_turned_off_by_the_defaults_state(quiet, tmp_path):
    """The first run had no val_loss, so its default ModelCheckpoint turned itself off (and
    saved that); the resume passes ModelCheckpoint(monitor='val_acc'), which must work."""
    class OnlyAcc(TinyModel):
        def validation_end(self, outputs):
            return {'val_acc': torch.tensor(0.1 * (1 + self.trainer.current_epoch))}

    first = Trainer(**quiet(max_nb_epochs=2, early_stop_callback=False))
    first.fit(OnlyAcc(n=16))
    assert first.checkpoint_callback.monitor.disabled
    last = os.path.join(first.checkpoint_callback.filepath, 'last.ckpt')
    ckpt = ModelCheckpoint(tmp_path / 'b', monitor='val_acc')
    Trainer(**quiet(max_nb_epochs=4, checkpoint_callback=ckpt, early_stop_callback=False,
                    resume_from_checkpoint=last)).fit(OnlyAcc(n=16))
    assert not ckpt.monitor.disabled
    assert ckpt_files(tmp_path / 'b') == ['epoch=3-step=8-val_acc=0.4000.ckpt', 'last.ckpt']


def test_every_n_steps_without_last_is_refused():
    """every_n_steps only refreshes last.ckpt: with save_last=False it silently saved nothing."""
    with pytest.raises(MisconfigurationException) as err:
        ModelCheckpoint(every_n_steps=2, save_last=False)
    assert 'ModelCheckpoint(every_n_steps=2, save_last=False)' in str(err.value)
    assert 'Pass save_last=True' in str(err.value)

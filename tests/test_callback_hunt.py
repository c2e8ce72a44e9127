"""Callbacks as researchers use them: early stopping across resumes, ModelCheckpoint files
across runs and folders, user callbacks with their own state."""
import os

import pytest
import torch

from pytorch_lightning import MisconfigurationException, Trainer, checkpoint_io
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint

from models import TinyModel
from test_checkpointing import Scripted


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

    class TrainOn(Callback):  # documented: clear the flag in on_fit_start to train on
        def on_fit_start(self, trainer, module):
            trainer.state.should_stop = False

    on = Trainer(**quiet(max_nb_epochs=3, checkpoint_callback=False, early_stop_callback=False,
                         callbacks=[TrainOn()], resume_from_checkpoint=final))
    on.fit(Scripted([3.0], n=16))
    assert (on.current_epoch, on.state.global_step) == (2, 6)


class HalfEpochValidation(TinyModel):
    """val_loss by validation number (two validations per 4-batch epoch): best at the 4th,
    then no improvement, so EarlyStopping(patience=3) asks to stop at the 7th (epoch 3)."""

    values = [1.0, 0.9, 0.95, 0.85, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]

    def validation_end(self, outputs):
        if self.trainer.state.stage == 'sanity_check':
            return {'val_loss': 99.0}
        return {'val_loss': torch.tensor(self.values[self.trainer.state.total_batches // 2 - 1])}


def test_early_stopping_resumed_from_late_save_points_stops_where_the_run_did(quiet, tmp_path):
    """Patience counts validations (two per epoch here), the stop takes effect mid-epoch once
    min_nb_epochs are done, and a resume from any of the last save points (before the stop,
    at its batch, at the epoch end after it) ends exactly where the uninterrupted run did."""
    def run(resume=None, saver=None):
        stop = EarlyStopping(patience=3)
        trainer = Trainer(**quiet(max_nb_epochs=10, min_nb_epochs=2, val_check_interval=0.5,
                                  checkpoint_callback=False, early_stop_callback=stop,
                                  callbacks=[saver] if saver else [],
                                  resume_from_checkpoint=resume))
        model = HalfEpochValidation(n=32)
        trainer.fit(model)
        state = trainer.state
        return ((trainer.current_epoch, state.global_step, state.total_batches, stop.wait,
                 stop.best, stop.stopped_epoch), model.layer.weight.detach().clone())

    saver = SaveEverySavePoint(str(tmp_path))
    expected, weights = run(saver=saver)
    # 7th validation: after batch 2 of epoch 3 (mid-epoch; epoch 3 >= min_nb_epochs)
    assert expected[:4] == (3, 14, 14, 3) and expected[5] == 3
    assert len(saver.paths) == 14 + 4  # a save point per batch and per epoch end
    for path in saver.paths[-4:]:
        got, got_weights = run(resume=path)
        assert got == expected, path
        assert torch.equal(got_weights, weights), path


def test_early_stopping_asks_again_after_its_stop_was_cleared(quiet, tmp_path):
    """Training on from the checkpoint of an early-stopped run (the flag cleared in
    on_fit_start): the restored EarlyStopping has run out of patience, so the next validation
    without improvement asks to stop again (it stayed silent: its old request counted)."""
    saver = SaveEverySavePoint(str(tmp_path))
    Trainer(**quiet(max_nb_epochs=10, checkpoint_callback=False, callbacks=[saver],
                    early_stop_callback=EarlyStopping(patience=1))).fit(Scripted([1.0, 2.0], n=16))

    class TrainOn(Callback):
        def on_fit_start(self, trainer, module):
            trainer.state.should_stop = False

    stop = EarlyStopping(patience=1)
    trainer = Trainer(**quiet(max_nb_epochs=10, checkpoint_callback=False, early_stop_callback=stop,
                              callbacks=[TrainOn()], resume_from_checkpoint=saver.paths[-1]))
    trainer.fit(Scripted([3.0], n=16))  # epoch 2 does not improve on 1.0
    assert trainer.current_epoch == 2 and stop.stopped_epoch == 2 and stop.wait == 2


def test_early_stopping_does_not_clear_a_stop_another_callback_asked_for_first(quiet):
    """A user's stop at epoch 1 waits for min_nb_epochs=4; EarlyStopping runs out of patience
    at epoch 2 (the flag is already up: not its request), then val_loss improves at epoch 3.
    It used to record the flag as its own and clear it, so the run went on to max_nb_epochs."""
    class StopAtEpoch1(Callback):
        def on_validation_end(self, trainer, module, metrics):
            if trainer.current_epoch == 1:
                trainer.state.should_stop = True

    stop = EarlyStopping(patience=1)
    trainer = Trainer(**quiet(max_nb_epochs=10, min_nb_epochs=4, checkpoint_callback=False,
                              early_stop_callback=stop, callbacks=[StopAtEpoch1()]))
    trainer.fit(Scripted([1.0, 0.9, 2.0, 0.5, 0.4], n=16))
    assert trainer.current_epoch == 3 and stop.stopped_epoch is None


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


def test_a_prefix_with_a_subfolder_still_keeps_one_best_file(quiet, tmp_path):
    """prefix='run1/' writes into a subfolder of filepath; the previous best there is still
    this run's own, so save_best_only replaces it."""
    ckpt = ModelCheckpoint(tmp_path / 'c', prefix='run1/')
    Trainer(**quiet(max_nb_epochs=3, checkpoint_callback=ckpt, early_stop_callback=False)
            ).fit(Scripted([1.0, 0.5, 0.4], n=16))
    assert ckpt_files(tmp_path / 'c' / 'run1') == ['epoch=2-step=6-val_loss=0.4000.ckpt',
                                                   'last.ckpt']


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


# ------------------------------------------------------------------------- user callbacks
def test_user_callback_state_by_key_across_a_resume(quiet, tmp_path):
    """Documented keys: the qualified class name, '#1' for the second instance in list order,
    or the state_key property. A callback the checkpoint does not hold (added on resume) gets
    no load_state_dict; the state of one dropped on resume is ignored."""
    class Renamed(Counting):
        @property
        def state_key(self):
            return 'stable-name'

    class Dropped(Callback):
        def state_dict(self):
            return {'x': 1}

    first, second, renamed = Counting(), Counting(), Renamed()
    folder = tmp_path / 'c'
    Trainer(**quiet(max_nb_epochs=2, checkpoint_callback=ModelCheckpoint(folder),
                    callbacks=[first, Dropped(), second, renamed])).fit(TinyModel(n=16))
    saved = checkpoint_io.load(folder / 'last.ckpt')['lightning']['callbacks']
    assert saved['Counting'] == saved['Counting#1'] == saved['stable-name'] == {'batches': 4}
    assert saved['test_user_callback_state_by_key_across_a_resume.<locals>.Dropped'] == {'x': 1}

    class Added(Counting):
        pass

    again = [Counting(), Counting(), Renamed(), Added()]
    again[1].batches = 7
    Trainer(**quiet(max_nb_epochs=3, checkpoint_callback=ModelCheckpoint(folder),
                    callbacks=again, resume_from_checkpoint=str(folder / 'last.ckpt'))
            ).fit(TinyModel(n=16))
    assert [cb.loaded for cb in again] == [{'batches': 4}] * 3 + [None]
    assert [cb.batches for cb in again] == [6, 6, 6, 2]  # restored, then epoch 2's batches


def test_a_callback_failing_in_on_epoch_end_fails_the_run_and_its_checkpoint_resumes(tmp_path):
    """The error surfaces unchanged, on_exception gets (trainer, module, error) instead of
    on_fit_end, the run is recorded as failed, and last.ckpt (the epoch's last batch) resumes
    to the weights of a run that never failed (on_epoch_end runs again on the resume)."""
    from pytorch_lightning.loggers.test_tube import read_run_status

    calls = []

    class Boom(Callback):
        def __init__(self, fail):
            self.fail = fail

        def on_epoch_end(self, trainer, module):
            if self.fail and trainer.current_epoch == 1:
                raise ValueError('disk quota')

        def on_exception(self, trainer, module, error):
            calls.append((type(trainer).__name__, type(module).__name__, error))

        def on_fit_end(self, trainer, module):
            calls.append('on_fit_end')

    def kwargs(folder, **more):
        return dict(default_save_path=str(tmp_path / folder), progress_bar=False,
                    print_weights_summary=False, max_nb_epochs=3, early_stop_callback=False,
                    checkpoint_callback=ModelCheckpoint(tmp_path / folder / 'c'), **more)

    trainer = Trainer(**kwargs('a', callbacks=[Boom(True)]))
    torch.manual_seed(0)
    failing = TinyModel(n=16)
    with pytest.raises(ValueError, match='disk quota') as raised:
        trainer.fit(failing)
    assert calls == [('Trainer', 'TinyModel', raised.value)]
    assert read_run_status(tmp_path / 'a' / 'lightning_logs' / 'version_0') == 'failed'
    last = tmp_path / 'a' / 'c' / 'last.ckpt'
    assert checkpoint_io.load(last)['lightning']['trainer_state']['total_batches'] == 4

    resumed = TinyModel(n=16)
    Trainer(**kwargs('b', callbacks=[Boom(False)], resume_from_checkpoint=str(last))).fit(resumed)
    torch.manual_seed(0)  # the failed run's initial weights
    whole = TinyModel(n=16)
    Trainer(**kwargs('c', callbacks=[Boom(False)])).fit(whole)
    assert torch.equal(resumed.layer.weight, whole.layer.weight)
    assert calls[1:] == ['on_fit_end', 'on_fit_end']

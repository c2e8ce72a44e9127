"""test-tube logging: files on disk, rows, hparams, user experiments, failures."""
import argparse
import csv
import os

import pytest
from test_tube import Experiment

from pytorch_lightning import Trainer
from pytorch_lightning.loggers import LoggerError, TestTubeLogger

from models import TinyModel


def read_rows(folder):
    with open(os.path.join(folder, 'metrics.csv')) as f:
        return list(csv.DictReader(f))


def read_tags(folder):
    with open(os.path.join(folder, 'meta_tags.csv')) as f:
        return {row['key']: row['value'] for row in csv.DictReader(f)}


def logged_kwargs(tmp_path, **overrides):
    kwargs = dict(default_save_path=str(tmp_path), progress_bar=False,
                  print_weights_summary=False, max_nb_epochs=2, nb_sanity_val_steps=0)
    kwargs.update(overrides)
    return kwargs


def test_default_experiment_writes_rows_tags_and_tensorboard(tmp_path):
    model = TinyModel(n=160, batch_size=8)  # 20 batches per epoch
    model.hparams = argparse.Namespace(lr=0.05, layers=1)
    trainer = Trainer(**logged_kwargs(tmp_path, add_log_row_interval=5, track_grad_norm=2))
    trainer.fit(model)
    folder = tmp_path / 'lightning_logs' / 'version_0'
    assert trainer.logger.version == 0 and trainer.logger.log_dir == str(folder)
    rows = read_rows(folder)
    train_rows = [r for r in rows if r['train_loss']]
    val_rows = [r for r in rows if r['val_loss']]
    assert len(train_rows) == 8 and len(val_rows) == 2  # 40 batches / 5, one per epoch
    assert [r['epoch'] for r in val_rows] == ['0', '1']
    assert all(r['grad_2_norm_total'] for r in train_rows)
    tags = read_tags(folder)
    assert set(tags) == {'lr', 'layers'} and float(tags['lr']) == 0.05 and float(tags['layers']) == 1
    assert any(name.startswith('events.out.tfevents') for name in os.listdir(folder / 'tf'))
    # a second fit takes the next version
    Trainer(**logged_kwargs(tmp_path, max_nb_epochs=1)).fit(TinyModel())
    assert (tmp_path / 'lightning_logs' / 'version_1' / 'metrics.csv').exists()


def test_experiment_false_writes_nothing(tmp_path):
    trainer = Trainer(**logged_kwargs(tmp_path, experiment=False))
    trainer.fit(TinyModel())
    assert trainer.experiment is None and not (tmp_path / 'lightning_logs').exists()


def test_user_experiment_receives_rows_in_order(tmp_path):
    exp = Experiment(save_dir=str(tmp_path), name='mine')
    exp.tag({'who': 'user'})

    class LogsDirectly(TinyModel):
        def on_epoch_end(self):
            self.experiment.log({'custom': float(self.trainer.current_epoch)})

    trainer = Trainer(**logged_kwargs(tmp_path, experiment=exp))
    trainer.fit(LogsDirectly())
    assert trainer.experiment is exp
    folder = tmp_path / 'mine' / f'version_{exp.version}'
    rows = read_rows(folder)
    kinds = ['custom' if r['custom'] else 'val' if r['val_loss'] else 'train' for r in rows]
    # 8 batches per epoch, a row every 10 batches: the train row lands in epoch 1
    assert kinds == ['val', 'custom', 'train', 'val', 'custom']
    assert read_tags(folder)['who'] == 'user'
    # the user's in-memory Experiment is refreshed and works normally again after fit
    assert len(exp.metrics) == 5 and 'log' not in exp.__dict__
    exp.log({'after': 1.0})
    exp.save()
    assert len(read_rows(folder)) == 6


def test_rows_written_before_a_crash_are_saved(tmp_path):
    class Crashes(TinyModel):
        def training_step(self, data_batch, batch_nb):
            if self.trainer.state.total_batches == 25:
                raise RuntimeError('boom')
            return super().training_step(data_batch, batch_nb)

    trainer = Trainer(**logged_kwargs(tmp_path, max_nb_epochs=5))
    with pytest.raises(RuntimeError, match='boom'):
        trainer.fit(Crashes())
    rows = read_rows(tmp_path / 'lightning_logs' / 'version_0')
    assert len([r for r in rows if r['train_loss']]) == 2  # rows at batches 10 and 20
    assert len([r for r in rows if r['val_loss']]) == 3


def test_writer_failure_is_reported_not_swallowed(tmp_path):
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('a file where the log folder should go')
    logger = TestTubeLogger(save_dir=str(blocker), name='x', version=0)
    trainer = Trainer(**logged_kwargs(tmp_path, experiment=logger))
    with pytest.raises(LoggerError, match='not_a_folder'):
        trainer.fit(TinyModel())


def test_test_metrics_are_logged(tmp_path):
    trainer = Trainer(**logged_kwargs(tmp_path, max_nb_epochs=1))
    model = TinyModel()
    trainer.fit(model)
    result = trainer.test()
    rows = read_rows(tmp_path / 'lightning_logs' / 'version_0')
    assert float(rows[-1]['test_acc']) == pytest.approx(result['test_acc'].item())


def test_import_does_not_load_test_tube():
    import subprocess
    import sys
    code = 'import sys, pytorch_lightning; print("test_tube" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'


def test_many_rows_reach_a_user_experiment(tmp_path):
    """finalize() hands every row to the user's Experiment and saves them all."""
    exp = Experiment(save_dir=str(tmp_path), name='long')
    logger = TestTubeLogger(experiment=exp)
    for i in range(5000):
        logger.log({'loss': float(i), 'epoch': 0}, i)
    logger.finalize()
    assert len(exp.metrics) == 5000
    assert len(read_rows(tmp_path / 'long' / f'version_{exp.version}')) == 5000


@pytest.mark.parametrize('rows_before', [0, 3])
def test_checkpoint_records_the_rows_the_experiment_holds(tmp_path, rows_before):
    """The checkpoint's row count includes rows the experiment held before fit; a resume
    keeps exactly the checkpoint's rows and the count goes on from there."""
    from pytorch_lightning import checkpoint_io
    from pytorch_lightning.callbacks import ModelCheckpoint
    exp = Experiment(save_dir=str(tmp_path), name='counted')
    for i in range(rows_before):
        exp.log({'earlier': float(i)})
    exp.save()
    trainer = Trainer(**logged_kwargs(tmp_path, experiment=exp, add_log_row_interval=3,
                                      checkpoint_callback=ModelCheckpoint(tmp_path / 'c')))
    trainer.fit(TinyModel())  # 8 batches x 2 epochs: rows at 3, 6, 9, 12, 15 + 2 val rows
    saved = checkpoint_io.load(tmp_path / 'c' / 'last.ckpt')['lightning']['logger']
    on_disk = read_rows(tmp_path / 'counted' / f'version_{exp.version}')
    assert saved['rows'] == len(on_disk) == rows_before + 7
    assert saved['saved'] + len(saved['carried']) >= saved['rows']  # what a resume restores
    assert trainer.logger.state_dict(0, durable=True)['rows'] == rows_before + 7  # after fit
    resumed = Trainer(**logged_kwargs(tmp_path, experiment=exp, add_log_row_interval=3,
                                      max_nb_epochs=3, checkpoint_callback=ModelCheckpoint(
                                          tmp_path / 'c'),
                                      resume_from_checkpoint=tmp_path / 'c' / 'last.ckpt'))
    resumed.fit(TinyModel())  # epoch 2: rows at 18, 21, 24 + 1 val row
    saved = checkpoint_io.load(tmp_path / 'c' / 'last.ckpt')['lightning']['logger']
    on_disk = read_rows(tmp_path / 'counted' / f'version_{exp.version}')
    assert saved['rows'] == len(on_disk) == rows_before + 11


def test_unsaved_rows_travel_in_the_checkpoint(tmp_path):
    """Rows not yet saved when a checkpoint is taken are carried in it; a resume after a
    hard kill (nothing saved at all) writes them again, and nothing after the checkpoint."""
    logger = TestTubeLogger(save_dir=str(tmp_path), name='carry', version=0)
    for i in range(3):
        logger.log({'loss': float(i)}, i)
    state = logger.state_dict(step=2)  # the writer has not saved yet (its first second)
    assert state['rows'] == 3 and [r['loss'] for r, _, _ in state['carried']][-3:] == [0., 1., 2.]
    logger.log({'loss': 99.0}, 3)       # after the checkpoint: must not survive the resume
    logger.finalize()
    resumed = TestTubeLogger(save_dir=str(tmp_path), name='carry')
    resumed.load_state_dict(state)
    resumed.log({'loss': 3.0}, 3)
    resumed.finalize()
    rows = read_rows(tmp_path / 'carry' / 'version_0')
    assert [float(r['loss']) for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert [r['step'] for r in rows] == ['0', '1', '2', '3']


def test_rows_reach_the_disk_without_flush_within_about_a_second(tmp_path):
    """The writer thread saves on its own (at most about once per second): a reader of
    metrics.csv sees rows during training without anyone calling flush()."""
    import time
    logger = TestTubeLogger(save_dir=str(tmp_path), name='live', version=0)
    folder = tmp_path / 'live' / 'version_0'

    def rows_within(seconds, expected):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if (folder / 'metrics.csv').exists() and len(read_rows(folder)) == expected:
                return True
            time.sleep(0.05)
        return False

    logger.log({'loss': 1.0}, 0)
    assert rows_within(5.0, 1)
    logger.log({'loss': 0.5}, 1)
    assert rows_within(5.0, 2)
    logger.finalize()


def test_writer_spaces_slow_saves_by_their_cost(tmp_path, monkeypatch):
    """test-tube rewrites the whole CSV on every save, so a long run's save gets slow: the
    writer then spaces its saves so they take at most SAVE_SHARE of the time."""
    import time
    import test_tube
    from pytorch_lightning.loggers import test_tube as tt
    logger = TestTubeLogger(save_dir=str(tmp_path), name='slow', version=0)
    opened = time.monotonic()
    logger.log({'loss': 1.0}, 0)
    assert logger._next_save >= opened + tt.SAVE_EVERY_S - 0.5  # not in the first second
    real_save = test_tube.Experiment.save
    monkeypatch.setattr(test_tube.Experiment, 'save',
                        lambda self: (time.sleep(0.2), real_save(self)))  # a long run's save
    start = time.monotonic()
    logger.flush()
    assert logger._next_save >= start + 0.2 / tt.SAVE_SHARE  # >= 10 s later, not 1 s
    logger.finalize()


def test_two_trainers_with_their_own_save_paths_each_write_their_own_folder(tmp_path):
    """test-tube finds every Experiment's folder from one global, the newest Experiment's
    save_dir: the first trainer's test() row must still land in its own metrics.csv, and
    not overwrite the second trainer's."""
    first = Trainer(**logged_kwargs(tmp_path / 'a', max_nb_epochs=1))
    first.fit(TinyModel())
    second = Trainer(**logged_kwargs(tmp_path / 'b', max_nb_epochs=1))
    second.fit(TinyModel())
    first.test()
    own = read_rows(tmp_path / 'a' / 'lightning_logs' / 'version_0')
    other = read_rows(tmp_path / 'b' / 'lightning_logs' / 'version_0')
    assert own[-1]['test_acc'] and not any(row.get('test_acc') for row in other)
    assert len(other) == 1 and other[0]['val_loss']  # the second run's one validation row


class DivergesInEpochOne(TinyModel):
    def validation_end(self, outputs):
        return {'val_loss': (0.5, float('nan'))[self.trainer.state.epoch]}


def test_a_nan_metric_is_written_as_nan_not_as_an_empty_cell(tmp_path):
    """pandas writes NaN as an empty cell, which reads back as "not logged": the runs table
    then showed a diverged run's last finite val_loss. The cell says nan, and the run's
    val_loss_last is NaN."""
    import math
    from pytorch_lightning import notebook
    trainer = Trainer(**logged_kwargs(tmp_path, max_nb_epochs=2, nb_sanity_val_steps=0,
                                      checkpoint_callback=False, early_stop_callback=False))
    trainer.fit(DivergesInEpochOne())
    folder = trainer.logger.log_dir
    cells = [row['val_loss'] for row in read_rows(folder) if row['epoch'] == '1']
    assert 'nan' in cells
    runs = notebook.runs(str(tmp_path), name=trainer.logger.name)
    assert math.isnan(runs['val_loss_last'].iloc[0])
    assert runs['val_loss_best'].iloc[0] == 0.5

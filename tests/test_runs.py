"""Each fit is a run: log versions, the folder lock between runs, fresh callback state, and
what a run's metrics.csv holds (step columns, types, times)."""
import datetime
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from test_tube import Experiment

from pytorch_lightning import MisconfigurationException, Trainer
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import TestTubeLogger
from pytorch_lightning.loggers.test_tube import LOCK_NAME, STALE_AFTER_S, FolderLock

from models import TinyModel
from test_logging import logged_kwargs as logged
from test_logging import read_rows

TESTS = os.path.dirname(os.path.abspath(__file__))


class Worsening(TinyModel):
    """val_loss grows every validation, so early stopping with patience 1 stops it."""

    def validation_end(self, outputs):
        return {'val_loss': torch.tensor(float(self.trainer.current_epoch))}


# ------------------------------------------------------------------------------ fit twice
def test_second_fit_with_the_default_logger_is_a_new_run(tmp_path):
    es = EarlyStopping(patience=1, mode='min')
    ckpt = ModelCheckpoint(mode='min')
    trainer = Trainer(**logged(tmp_path, max_nb_epochs=6, early_stop_callback=es,
                               checkpoint_callback=ckpt))
    trainer.fit(Worsening())
    first_epoch, first_best = trainer.current_epoch, ckpt.best_path
    assert first_epoch == 1 and es.stopped_epoch == 1  # stopped early after two epochs
    trainer.fit(Worsening())
    # the stop latch and the best score were reset: the second run stops the same way and
    # keeps its own best file in its own version folder
    assert trainer.current_epoch == first_epoch and es.stopped_epoch == 1
    assert os.path.dirname(ckpt.best_path) != os.path.dirname(first_best)
    assert 'version_1' in ckpt.best_path and os.path.exists(first_best)
    for version in (0, 1):
        rows = read_rows(tmp_path / 'lightning_logs' / f'version_{version}')
        assert [r['epoch'] for r in rows if r['val_loss']] == ['0', '1']


def test_second_fit_into_a_fixed_version_is_refused_unless_it_resumes(tmp_path):
    exp = Experiment(save_dir=str(tmp_path), name='fixed')
    trainer = Trainer(**logged(tmp_path, experiment=exp, max_nb_epochs=1))
    trainer.fit(TinyModel())
    with pytest.raises(MisconfigurationException, match='fixed version.*resume_from_checkpoint'):
        trainer.fit(TinyModel())
    last = tmp_path / 'fixed' / f'version_{exp.version}' / 'checkpoints' / 'last.ckpt'
    trainer.resume_from_checkpoint = str(last)
    trainer.max_nb_epochs = 2
    trainer.fit(TinyModel())  # resuming the first run is allowed
    rows = read_rows(tmp_path / 'fixed' / f'version_{exp.version}')
    assert [r['epoch'] for r in rows if r['val_loss']] == ['0', '1']


def test_save_checkpoint_after_fit_then_a_new_run_in_the_same_version(tmp_path):
    """The reported deadlock: fit, save_checkpoint, then another fit logging into the same
    version. Run in a subprocess so a hang fails the test instead of stalling the suite."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        from test_tube import Experiment
        from pytorch_lightning import Trainer
        from models import TinyModel
        kw = dict(default_save_path=sys.argv[1], progress_bar=False,
                  print_weights_summary=False, max_nb_epochs=1)
        trainer = Trainer(experiment=Experiment(save_dir=sys.argv[1], version=3), **kw)
        trainer.fit(TinyModel())
        trainer.save_checkpoint(sys.argv[1] + '/after_fit.ckpt')
        Trainer(experiment=Experiment(save_dir=sys.argv[1], version=3), **kw).fit(TinyModel())
        print('second fit returned')
    """)
    proc = subprocess.run([sys.executable, '-c', script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'second fit returned' in proc.stdout
    assert not os.path.exists(tmp_path / 'default' / 'version_3' / LOCK_NAME)


# ------------------------------------------------------------------------------ the lock
def write_lock(folder, **owner):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_NAME), 'w') as f:
        json.dump(dict({'host': socket.gethostname(), 'since': time.time()}, **owner), f)
    return os.path.join(folder, LOCK_NAME)


def test_lock_of_a_dead_run_does_not_block(tmp_path):
    gone = subprocess.Popen([sys.executable, '-c', 'pass'])
    gone.wait()
    folder = tmp_path / 'runs' / 'version_0'
    write_lock(folder, pid=gone.pid, start=1)
    logger = TestTubeLogger(save_dir=str(tmp_path), name='runs', version=0)
    logger.log({'loss': 1.0}, 0)
    logger.finalize()
    assert len(read_rows(folder)) == 1 and not os.path.exists(folder / LOCK_NAME)


def test_lock_of_a_reused_pid_does_not_block(tmp_path):
    """A lock whose pid now belongs to another process (different start time) is stale."""
    folder = tmp_path / 'runs' / 'version_0'
    write_lock(folder, pid=os.getpid(), start=-5)
    lock = FolderLock(str(folder))
    lock.acquire()
    assert lock.held
    lock.release()


def test_live_run_in_the_same_folder_is_a_clear_error(tmp_path):
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        from pytorch_lightning.loggers.test_tube import _process_start
        folder = tmp_path / 'runs' / 'version_0'
        write_lock(folder, pid=sleeper.pid, start=_process_start(sleeper.pid))
        trainer = Trainer(**logged(tmp_path, experiment=TestTubeLogger(
            save_dir=str(tmp_path), name='runs', version=0)))

        class Counts(TinyModel):
            batches = 0

            def training_step(self, data_batch, batch_nb):
                Counts.batches += 1
                return super().training_step(data_batch, batch_nb)

        with pytest.raises(MisconfigurationException, match=f'pid {sleeper.pid}'):
            trainer.fit(Counts())
        assert Counts.batches == 0  # found before the first batch
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_open_loggers_of_one_process_share_no_folder(tmp_path):
    first = TestTubeLogger(save_dir=str(tmp_path), name='runs', version=0)
    first.log({'loss': 1.0}, 0)
    second = TestTubeLogger(save_dir=str(tmp_path), name='runs', version=0)
    with pytest.raises(MisconfigurationException, match='in use by a live run'):
        second.log({'loss': 2.0}, 0)
    first.finalize()
    second.log({'loss': 2.0}, 1)  # free again once the first is finished
    second.finalize()


def test_lock_from_another_host_is_stale_once_untouched(tmp_path):
    folder = tmp_path / 'runs' / 'version_0'
    path = write_lock(folder, host='some-other-node', pid=1, start=1)
    with pytest.raises(MisconfigurationException, match='some-other-node'):
        FolderLock(str(folder)).acquire()
    old = time.time() - STALE_AFTER_S - 10
    os.utime(path, (old, old))
    lock = FolderLock(str(folder))
    lock.acquire()
    lock.release()


# ------------------------------------------------------------------------------ metrics.csv
def test_rows_have_step_columns_and_epoch_stays_int_after_test_rows(tmp_path):
    trainer = Trainer(**logged(tmp_path, accumulate_grad_batches=2, add_log_row_interval=2))
    trainer.fit(TinyModel())  # 8 batches per epoch, an optimizer step every 2
    trainer.test()
    rows = read_rows(tmp_path / 'lightning_logs' / 'version_0')
    train = [r for r in rows if r['train_loss']]
    assert [int(r['step']) for r in train] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [int(r['global_step']) for r in train] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert rows[-1]['test_acc'] and rows[-1]['step'] == '16'
    assert all(r['epoch'] in ('0', '1') for r in rows)  # ints, the test row's too


def test_created_at_is_when_the_row_was_logged(tmp_path):
    class Slow(TinyModel):
        def training_step(self, data_batch, batch_nb):
            time.sleep(0.1)
            return super().training_step(data_batch, batch_nb)

    Trainer(**logged(tmp_path, max_nb_epochs=1, add_log_row_interval=1)).fit(Slow())
    rows = [r for r in read_rows(tmp_path / 'lightning_logs' / 'version_0') if r['train_loss']]
    times = [datetime.datetime.fromisoformat(r['created_at']) for r in rows]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert len(gaps) == 7 and min(gaps) >= 0.09  # one per batch, not one burst per save


def test_user_experiment_gets_no_extra_tensorboard_file(tmp_path):
    exp = Experiment(save_dir=str(tmp_path), name='mine')
    Trainer(**logged(tmp_path, experiment=exp, max_nb_epochs=1)).fit(TinyModel())
    tf = tmp_path / 'mine' / f'version_{exp.version}' / 'tf'
    assert len([n for n in os.listdir(tf) if n.startswith('events.out')]) == 1


def test_reopened_version_keeps_int_columns_and_typed_tags(tmp_path):
    model = TinyModel()
    model.hparams = {'hidden': 8, 'lr': 0.5}
    Trainer(**logged(tmp_path, experiment=Experiment(save_dir=str(tmp_path), version=0),
                     max_nb_epochs=1)).fit(model)
    folder = tmp_path / 'default' / 'version_0'
    reopened = Experiment(save_dir=str(tmp_path), version=0)  # test-tube reads with pandas
    assert not isinstance(reopened.tags['hidden'], int)       # ... and gets 8.0
    Trainer(**logged(tmp_path, experiment=reopened, max_nb_epochs=1)).fit(TinyModel())
    assert reopened.tags == {'hidden': 8, 'lr': 0.5}  # from hparams.json
    assert type(reopened.tags['hidden']) is int
    rows = read_rows(folder)
    assert [r['epoch'] for r in rows if r['val_loss']] == ['0', '0']
    assert all('.' not in r['step'] and '.' not in r['global_step'] for r in rows)
    assert type(reopened.metrics[0]['step']) is int


def test_load_from_metrics_after_a_logged_fit_keeps_int_hparams(tmp_path):
    """The whole path: the logger writes hparams.json beside meta_tags.csv (where test-tube
    writes `8.0`), and load_from_metrics builds the layer with the int."""
    import argparse
    from torch import nn

    class Sized(TinyModel):
        def __init__(self, hparams):
            super().__init__(hparams)
            self.layer = nn.Sequential(nn.Linear(32, hparams.hidden), nn.Linear(hparams.hidden, 2))

    Trainer(**logged(tmp_path, max_nb_epochs=1)).fit(
        Sized(argparse.Namespace(hidden=8, lr=0.5)))
    folder = tmp_path / 'lightning_logs' / 'version_0'
    with open(folder / 'meta_tags.csv') as f:
        assert '8.0' in f.read()  # test-tube's float column
    model = Sized.load_from_metrics(folder / 'checkpoints' / 'last.ckpt', folder / 'meta_tags.csv')
    assert type(model.hparams.hidden) is int and model.layer[0].out_features == 8


# ------------------------------------------------------------------------------ auto-restore
class CrashesAt(TinyModel):
    crash_at = 13

    def training_step(self, data_batch, batch_nb):
        if self.trainer.state.total_batches == self.crash_at:
            raise RuntimeError('crash')
        return super().training_step(data_batch, batch_nb)


def test_rerun_of_an_unfinished_version_restores_its_newest_checkpoint(tmp_path, capsys):
    from pytorch_lightning import checkpoint_io
    kw = logged(tmp_path, max_nb_epochs=3)
    with pytest.raises(RuntimeError, match='crash'):
        Trainer(experiment=TestTubeLogger(save_dir=str(tmp_path), name='r', version=0),
                **kw).fit(CrashesAt())
    folder = tmp_path / 'r' / 'version_0' / 'checkpoints'
    saved = {p.name: checkpoint_io.load(p)['lightning']['trainer_state']['total_batches']
             for p in folder.glob('*.ckpt')}
    newest = max(saved, key=saved.get)
    os.utime(folder / min(saved, key=saved.get))  # file times do not decide
    CrashesAt.crash_at = -1
    trainer = Trainer(experiment=TestTubeLogger(save_dir=str(tmp_path), name='r', version=0),
                      **kw)
    trainer.fit(CrashesAt())
    out = capsys.readouterr().out
    assert 'did not finish' in out and newest in out
    assert trainer.state.total_batches == 24  # 3 epochs of 8, continued from the checkpoint
    rows = read_rows(tmp_path / 'r' / 'version_0')
    assert [r['epoch'] for r in rows if r['val_loss']] == ['0', '1', '2']  # no epoch twice


def test_rerun_of_an_unfinished_version_without_checkpoint_starts_its_rows_again(
        tmp_path, capsys):
    kw = logged(tmp_path, max_nb_epochs=2, checkpoint_callback=False)
    CrashesAt.crash_at = 6  # after the rows of batches 0-4 (add_log_row_interval 5 below)
    try:
        with pytest.raises(RuntimeError, match='crash'):
            Trainer(experiment=TestTubeLogger(save_dir=str(tmp_path), name='n', version=0),
                    add_log_row_interval=5, **kw).fit(CrashesAt())
        assert read_rows(tmp_path / 'n' / 'version_0')  # the crashed run's rows were saved
        CrashesAt.crash_at = -1
        trainer = Trainer(experiment=TestTubeLogger(save_dir=str(tmp_path), name='n',
                                                    version=0), add_log_row_interval=5, **kw)
        trainer.fit(CrashesAt())
    finally:
        CrashesAt.crash_at = 13
    assert 'left no checkpoint' in capsys.readouterr().out
    steps = [int(r['step']) for r in read_rows(tmp_path / 'n' / 'version_0')]
    assert steps == sorted(steps) and steps[0] == 5  # the crashed run's rows are replaced


def test_a_finished_or_new_version_is_not_restored(tmp_path, capsys):
    kw = logged(tmp_path, max_nb_epochs=1)
    Trainer(experiment=TestTubeLogger(save_dir=str(tmp_path), name='f', version=0),
            **kw).fit(TinyModel())
    Trainer(**kw).fit(TinyModel())  # the default: a new version
    trainer = Trainer(experiment=TestTubeLogger(save_dir=str(tmp_path), name='f', version=0),
                      **kw)
    trainer.fit(TinyModel())
    assert 'did not finish' not in capsys.readouterr().out
    assert trainer.state.total_batches == 8


# ------------------------------------------------------------------------------ run status
KILLED_RUN = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from pytorch_lightning import Trainer
    from pytorch_lightning.loggers import TestTubeLogger
    from models import TinyModel

    class Stalls(TinyModel):  # says where it is, then waits for its SIGKILL
        def training_step(self, data_batch, batch_nb):
            if self.trainer.state.total_batches == 12:
                open(sys.argv[2], 'w').close()
                time.sleep(120)
            return super().training_step(data_batch, batch_nb)

    Trainer(experiment=TestTubeLogger(save_dir=sys.argv[1], name='k', version=0),
            default_save_path=sys.argv[1], progress_bar=False, print_weights_summary=False,
            max_nb_epochs=3, nb_sanity_val_steps=0).fit(Stalls())
""")


def test_a_sigkilled_run_reads_as_died_and_its_version_is_restored(tmp_path, capsys):
    """A run killed by SIGKILL leaves ``run_status.json`` saying 'running' with its pid; on
    this host, with that pid gone, every reader reports 'died' (the logger, the notebook
    table), and a new fit into that version still restores its newest checkpoint."""
    from pytorch_lightning import notebook
    from pytorch_lightning.loggers.test_tube import read_run_status
    folder, marker = tmp_path / 'k' / 'version_0', tmp_path / 'stalled'
    run = subprocess.Popen([sys.executable, '-c', KILLED_RUN.format(tests=TESTS), str(tmp_path),
                            str(marker)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert run.poll() is None, run.stderr.read().decode()
            assert time.monotonic() < deadline, 'the run never reached batch 12'
            time.sleep(0.05)
        assert read_run_status(folder) == 'running'  # alive: what it says is true
        assert list(notebook.runs(tmp_path, name='k')['status']) == ['running']
    finally:
        run.kill()  # SIGKILL: no chance to record anything
        run.wait(timeout=60)
        run.stderr.close()
    record = json.loads((folder / 'run_status.json').read_text())
    assert record['status'] == 'running' and record['pid'] == run.pid
    assert read_run_status(folder) == 'died'
    assert list(notebook.runs(tmp_path, name='k')['status']) == ['died']

    trainer = Trainer(experiment=TestTubeLogger(save_dir=str(tmp_path), name='k', version=0),
                      **logged(tmp_path, max_nb_epochs=3))
    assert trainer.logger.run_status() == 'died'
    trainer.fit(TinyModel())
    assert 'did not finish' in capsys.readouterr().out
    assert trainer.state.total_batches == 24  # continued from the epoch-0 checkpoint
    assert read_run_status(folder) == 'finished'


def write_status(folder, **record):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'run_status.json'), 'w') as f:
        json.dump(dict({'status': 'running', 'host': socket.gethostname(), 'at': 0}, **record), f)


def test_running_status_of_a_reused_pid_or_another_host(tmp_path):
    """The recorded pid now belongs to another process (a different start time): 'died'. A
    run on another host cannot be checked from here: it stays 'running'."""
    from pytorch_lightning.loggers.test_tube import _process_start, read_run_status
    me, start = os.getpid(), _process_start(os.getpid())
    write_status(tmp_path / 'reused', pid=me, start=-5)
    write_status(tmp_path / 'mine', pid=me, start=start)
    write_status(tmp_path / 'elsewhere', pid=me, host=socket.gethostname() + '-other')
    write_status(tmp_path / 'ended', pid=me, start=-5, status='failed')
    assert read_run_status(tmp_path / 'reused') == ('died' if start is not None else 'running')
    assert read_run_status(tmp_path / 'mine') == 'running'
    assert read_run_status(tmp_path / 'elsewhere') == 'running'
    assert read_run_status(tmp_path / 'ended') == 'failed'  # only 'running' is checked

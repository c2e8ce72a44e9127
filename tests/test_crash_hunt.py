"""A crash, a kill or a full disk never leaves a corrupt checkpoint, loses what was saved, or
hides the error: disk errors in the middle of fit, truncated checkpoint files, signals arriving
twice or at awkward moments, and a real process SIGKILLed while it writes a checkpoint or the
logger's CSV. Subprocess cases run small scripts written here."""
import errno
import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from models import TinyModel
from pytorch_lightning import Trainer, checkpoint_io
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.exceptions import CheckpointError
from pytorch_lightning.loggers.test_tube import read_metrics_csv, read_run_status

TESTS = os.path.dirname(os.path.abspath(__file__))


def fit_kwargs(tmp_path, **overrides):
    """A logged run (default test-tube logger) with last.ckpt rewritten every optimizer step."""
    kwargs = dict(default_save_path=str(tmp_path), progress_bar=False,
                  print_weights_summary=False, max_nb_epochs=2, nb_sanity_val_steps=0,
                  early_stop_callback=False, add_log_row_interval=1, log_save_interval=2,
                  checkpoint_callback=ModelCheckpoint(str(tmp_path / 'ckpt'), every_n_steps=1))
    kwargs.update(overrides)
    return kwargs


def version_folder(tmp_path, version=0):
    return tmp_path / 'lightning_logs' / f'version_{version}'


def saved_batches(path):
    return checkpoint_io.load(path)['lightning']['trainer_state']['total_batches']


def failing_nth(real, n, error):
    """``real``, except that its ``n``-th call (1-based) raises ``error`` instead."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise error
        return real(*args, **kwargs)
    return wrapper


# ------------------------------------------------------------------ files on disk
def test_every_checkpoint_loads_with_torch_load_defaults(tmp_path):
    Trainer(**fit_kwargs(tmp_path)).fit(TinyModel())
    paths = glob.glob(str(tmp_path / 'ckpt' / '*.ckpt'))
    assert paths
    for path in paths:
        checkpoint = torch.load(path)  # torch's defaults: weights_only=True
        assert checkpoint['lightning']['trainer_state']['total_batches'] == 16


def test_a_torn_checkpoint_always_raises_checkpoint_error(tmp_path):
    """Whatever the length a checkpoint is cut to (a copy interrupted, a full disk), ``load``
    says which file is broken: never another exception type, never a partial dict."""
    Trainer(**fit_kwargs(tmp_path, max_nb_epochs=1)).fit(TinyModel())
    data = (tmp_path / 'ckpt' / 'last.ckpt').read_bytes()
    torn = tmp_path / 'torn.ckpt'
    for length in sorted({0, 1, 10, 100, 512, len(data) // 3, len(data) // 2, len(data) - 100,
                          len(data) - 22, len(data) - 1}):
        torn.write_bytes(data[:length])
        with pytest.raises(CheckpointError, match='torn.ckpt'):
            checkpoint_io.load(torn)


# ------------------------------------------------------------------ disk errors
def test_full_disk_while_writing_a_checkpoint_surfaces_and_keeps_the_previous(tmp_path,
                                                                             monkeypatch):
    full = OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(checkpoint_io.torch, 'save', failing_nth(torch.save, 5, full))
    with pytest.raises(OSError) as raised:
        Trainer(**fit_kwargs(tmp_path)).fit(TinyModel())
    assert raised.value.errno == errno.ENOSPC
    folder = tmp_path / 'ckpt'
    assert saved_batches(folder / 'last.ckpt') == 4  # the 4th save, complete
    assert not [n for n in os.listdir(folder) if n.endswith('.tmp')]
    assert read_run_status(version_folder(tmp_path)) == 'failed'


def test_rename_failing_in_the_background_surfaces_and_keeps_the_previous(tmp_path,
                                                                        monkeypatch):
    """The fsync/rename tail runs on the finisher thread: its error is raised in the
    training thread at the next save, the file before it stays complete."""
    full = OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(checkpoint_io, '_finish', failing_nth(checkpoint_io._finish, 3, full))
    with pytest.raises(CheckpointError, match='could not be finished') as raised:
        Trainer(**fit_kwargs(tmp_path)).fit(TinyModel())
    assert raised.value.__cause__ is full
    assert saved_batches(tmp_path / 'ckpt' / 'last.ckpt') == 2
    for path in glob.glob(str(tmp_path / 'ckpt' / '*.ckpt')):  # what a resume may pick
        checkpoint_io.load(path)
    assert read_run_status(version_folder(tmp_path)) == 'failed'


def test_last_checkpoint_failing_after_the_last_batch_is_not_a_finished_run(tmp_path,
                                                                          monkeypatch):
    """The run's final last.ckpt is made durable after the loop: if that fails, fit raises
    and the run must not be recorded as finished (a later run of the version would then not
    pick its checkpoints up)."""
    full = OSError(errno.ENOSPC, 'No space left on device')
    # 16 optimizer steps in 2 epochs; save 16 is last.ckpt after the final batch
    monkeypatch.setattr(checkpoint_io, '_finish', failing_nth(checkpoint_io._finish, 16, full))
    with pytest.raises(CheckpointError, match='could not be finished'):
        Trainer(**fit_kwargs(tmp_path)).fit(TinyModel())
    assert saved_batches(tmp_path / 'ckpt' / 'last.ckpt') == 15
    assert read_run_status(version_folder(tmp_path)) == 'failed'


def test_final_log_save_failing_is_not_a_finished_run(tmp_path, monkeypatch):
    """The logger's last save happens when fit ends: if it fails, fit raises and the run is
    not recorded as finished."""
    from test_tube import Experiment
    saves = []
    real = Experiment.save

    def save(exp):
        saves.append(1)
        if finishing:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real(exp)

    class FinishWithFullDisk(Callback):
        def on_fit_end(self, trainer, module):
            finishing.append(1)

    finishing = []
    monkeypatch.setattr(Experiment, 'save', save)
    kwargs = fit_kwargs(tmp_path, checkpoint_callback=False, callbacks=[FinishWithFullDisk()])
    with pytest.raises(Exception, match='No space left'):
        Trainer(**kwargs).fit(TinyModel())
    assert saves and finishing
    assert read_run_status(version_folder(tmp_path)) != 'finished'




def test_full_disk_copying_the_best_file_leaves_no_torn_checkpoint(tmp_path, monkeypatch):
    """On a file system without hard links the best file is a copy of last.ckpt: a copy cut
    short by a full disk must not leave a torn file under a checkpoint's name."""
    import shutil
    real_link = os.link

    def no_links(source, target, *args, **kwargs):
        if os.fspath(target).endswith('.ckpt'):
            raise OSError(errno.EPERM, 'hard links not supported')
        return real_link(source, target, *args, **kwargs)

    def copy_cut_short(source, target, *args, **kwargs):
        with open(source, 'rb') as src, open(target, 'wb') as dst:
            dst.write(src.read()[:1000])
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(os, 'link', no_links)
    monkeypatch.setattr(shutil, 'copyfile', copy_cut_short)
    with pytest.raises(CheckpointError, match='could not be finished'):
        Trainer(**fit_kwargs(tmp_path)).fit(TinyModel())
    for path in glob.glob(str(tmp_path / 'ckpt' / '*.ckpt')):
        checkpoint_io.load(path)
    assert not [n for n in os.listdir(tmp_path / 'ckpt') if n.endswith('.tmp')]


def test_ctrl_c_while_a_checkpoint_is_being_finished(tmp_path, monkeypatch):
    """Ctrl-C reaches the training thread while the finisher thread fsyncs and renames a
    checkpoint: fit still finishes that save before KeyboardInterrupt leaves it."""
    import _thread
    real, calls = checkpoint_io._finish, []

    def finish(*args):
        calls.append(1)
        if len(calls) == 3:
            _thread.interrupt_main()  # Ctrl-C, delivered while this save is in flight
            time.sleep(0.2)
        real(*args)

    monkeypatch.setattr(checkpoint_io, '_finish', finish)
    with pytest.raises(KeyboardInterrupt):
        Trainer(**fit_kwargs(tmp_path)).fit(TinyModel())
    assert saved_batches(tmp_path / 'ckpt' / 'last.ckpt') >= 3
    assert not [n for n in os.listdir(tmp_path / 'ckpt') if n.endswith('.tmp')]
    assert read_run_status(version_folder(tmp_path)) == 'interrupted'


def test_a_stuck_fsync_is_waited_for_once(tmp_path, monkeypatch):
    """An fsync that never returns (a hung network file system): fit raises after one
    FINISH_TIMEOUT_S wait, not after one more while it closes (and another at exit); later
    waits only check again briefly (STUCK_RECHECK_S)."""
    import threading
    release, waits = threading.Event(), []
    real = checkpoint_io._finish

    def stuck(*args):
        release.wait(60)
        real(*args)

    class Recorded(threading.Thread):
        def join(self, timeout=None):
            if self.name == 'checkpoint-finisher':
                waits.append(timeout)
            super().join(timeout)

    monkeypatch.setattr(checkpoint_io, 'FINISH_TIMEOUT_S', 0.5)
    monkeypatch.setattr(checkpoint_io, 'STUCK_RECHECK_S', 0.01)
    monkeypatch.setattr(checkpoint_io, '_finish', stuck)
    monkeypatch.setattr(checkpoint_io.threading, 'Thread', Recorded)
    try:
        with pytest.raises(CheckpointError, match='not durable'):
            Trainer(**fit_kwargs(tmp_path)).fit(TinyModel())
        with pytest.raises(CheckpointError, match='not durable'):
            checkpoint_io.wait_for_saves()  # still stuck: said again after a brief check
        assert waits == [0.5, 0.01, 0.01]  # fit's wait, its close, the call above
    finally:
        release.set()
        checkpoint_io._finisher._thread.join(60)  # the disk answers: the stuck save completes
    checkpoint_io.wait_for_saves()
    checkpoint_io.load(tmp_path / 'ckpt' / 'last.ckpt')


def test_full_disk_in_the_log_writer_thread_surfaces(tmp_path, monkeypatch):
    """The writer thread's save fails (full disk) while training goes on: fit raises the
    error (with test-tube's traceback), the run reads 'failed', and the checkpoints written
    before it, which carry the rows not on disk yet, stay whole."""
    from test_tube import Experiment
    from pytorch_lightning.loggers import LoggerError
    from pytorch_lightning.loggers import test_tube as adapter
    monkeypatch.setattr(adapter, 'SAVE_EVERY_S', 0.0)  # the writer saves at every request
    full = OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(Experiment, 'save', failing_nth(Experiment.save, 1, full))

    class Slow(TinyModel):  # gives the writer thread time to fail while training goes on
        def training_step(self, data_batch, batch_nb):
            time.sleep(0.02)
            return super().training_step(data_batch, batch_nb)

    with pytest.raises(LoggerError, match='No space left'):
        Trainer(**fit_kwargs(tmp_path, max_nb_epochs=5)).fit(Slow())
    assert read_run_status(version_folder(tmp_path)) == 'failed'
    for path in glob.glob(str(tmp_path / 'ckpt' / '*.ckpt')):
        torch.load(path)

# ------------------------------------------------------------------ errors in user hooks
class FailingSave(TinyModel):
    """``on_save_checkpoint`` raises at the 3rd checkpoint, or adds an object torch.save
    cannot pickle (``unpicklable``)."""

    def __init__(self, unpicklable=False):
        super().__init__()
        self.unpicklable, self.saves = unpicklable, 0

    def on_save_checkpoint(self, checkpoint):
        self.saves += 1
        if self.saves == 3:
            if not self.unpicklable:
                raise ValueError('user hook failed')
            checkpoint['handle'] = lambda: None


@pytest.mark.parametrize('unpicklable', [False, True])
def test_error_in_a_checkpoint_hook_surfaces_and_keeps_the_previous(tmp_path, unpicklable):
    with pytest.raises(Exception, match='user hook failed|pickle') as raised:
        Trainer(**fit_kwargs(tmp_path)).fit(FailingSave(unpicklable))
    assert not isinstance(raised.value, CheckpointError) or raised.value.__cause__
    assert saved_batches(tmp_path / 'ckpt' / 'last.ckpt') == 2
    assert not [n for n in os.listdir(tmp_path / 'ckpt') if n.endswith('.tmp')]
    assert read_run_status(version_folder(tmp_path)) == 'failed'


class FailingValidation(TinyModel):
    def validation_end(self, outputs):
        if self.trainer.state.epoch == 1:
            raise RuntimeError('validation_end failed')
        return super().validation_end(outputs)


def test_error_in_validation_at_a_save_point_then_resume_is_exact(tmp_path):
    """The epoch-1 validation fails: last.ckpt from the step before stays whole, and a
    resume from it ends where an uninterrupted run does."""
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match='validation_end failed'):
        Trainer(**fit_kwargs(tmp_path / 'a')).fit(FailingValidation())
    last = tmp_path / 'a' / 'ckpt' / 'last.ckpt'
    assert saved_batches(last) == 15  # the save point before the last batch (validated, raised)
    assert read_run_status(version_folder(tmp_path / 'a')) == 'failed'

    torch.manual_seed(0)
    reference = TinyModel()
    Trainer(**fit_kwargs(tmp_path / 'b', max_nb_epochs=3)).fit(reference)
    resumed = TinyModel()
    Trainer(**fit_kwargs(tmp_path / 'a', max_nb_epochs=3,
                         resume_from_checkpoint=str(last))).fit(resumed)
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name

# ------------------------------------------------------------------ signals (subprocesses)
SIGNAL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from models import TinyModel
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint

    case, save_dir = sys.argv[1], sys.argv[2]

    def term():
        os.kill(os.getpid(), signal.SIGTERM)

    class Signalling(TinyModel):
        def training_step(self, data_batch, batch_nb):
            if case == 'twice' and self.trainer.state.total_batches == 5:
                term()
            if case == 'usr1' and self.trainer.state.total_batches == 5:
                os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's warning, sent twice
                os.kill(os.getpid(), signal.SIGUSR1)
            return super().training_step(data_batch, batch_nb)

        def validation_step(self, data_batch, batch_nb):
            stage = self.trainer.state.stage
            if (case, stage) in (('validation', 'validate'), ('sanity', 'sanity_check')):
                term()
            return super().validation_step(data_batch, batch_nb)

    class Hooks(Callback):
        def on_epoch_start(self, trainer, module):
            if case == 'before_first_batch':
                term()

        def on_exception(self, trainer, module, error):
            if case in ('twice', 'usr1'):  # a (second) SIGTERM while fit saves what it has
                term()

    Trainer(default_save_path=save_dir, progress_bar=False, print_weights_summary=False,
            max_nb_epochs=3, nb_sanity_val_steps=1 if case == 'sanity' else 0,
            early_stop_callback=False, add_log_row_interval=1, log_save_interval=100,
            callbacks=[Hooks()],
            checkpoint_callback=ModelCheckpoint(os.path.join(save_dir, 'ckpt'),
                                                every_n_steps=1)).fit(Signalling())
""")


@pytest.mark.parametrize('case, rows', [
    ('twice', 5),               # a second SIGTERM arrives while fit closes after the first
    ('validation', 8),          # during the first epoch's validation (after 8 batches)
    ('sanity', 0),              # during the sanity check
    ('before_first_batch', 0),  # in the first on_epoch_start
])
def test_sigterm_saves_every_row_and_ends_by_the_signal(tmp_path, case, rows):
    proc = subprocess.run([sys.executable, '-c', SIGNAL_SCRIPT.format(tests=TESTS), case,
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGTERM, proc.stdout + proc.stderr
    folder = version_folder(tmp_path)
    assert read_run_status(folder) == 'interrupted'
    logged = [r for r in read_metrics_csv(folder / 'metrics.csv') if 'train_loss' in r]
    assert len(logged) == rows  # every training row logged before the signal is on disk
    for path in glob.glob(str(tmp_path / 'ckpt' / '*.ckpt')):
        assert saved_batches(path) <= rows
    assert not glob.glob(str(tmp_path / 'ckpt' / '.*.tmp'))


# ------------------------------------------------------------------ SIGKILL mid-write
from test_resume import SCRIPT as RESUME_SCRIPT, assert_same_run, rows  # noqa: E402


@pytest.fixture(scope='module')
def uninterrupted_run(tmp_path_factory):
    """tests/resume_script.py run to its end: its result and its metric rows."""
    folder = tmp_path_factory.mktemp('full')
    subprocess.run([sys.executable, RESUME_SCRIPT, str(folder), str(folder / 'out.pt')],
                   check=True, capture_output=True, timeout=120)
    return torch.load(folder / 'out.pt'), rows(version_folder(folder))


def check_killed_then_resumed(save_dir, reference, kind, nth):
    """Run tests/resume_script.py, SIGKILLed at its ``nth`` write step of ``kind`` (see
    ``kill_at_nth_write`` there); then every checkpoint left must load with torch's
    defaults, metrics.csv must parse, the run must read 'died', and a resume from last.ckpt
    (or a new run, when none was written) must end bit-exact with the uninterrupted run."""
    out = save_dir / 'out.pt'
    run = [sys.executable, RESUME_SCRIPT, str(save_dir), str(out)]
    proc = subprocess.run(run + ['--kill-in', kind, '--kill-at', str(nth)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    folder = version_folder(save_dir)
    for path in glob.glob(str(save_dir / 'ckpt' / '*.ckpt')):
        torch.load(path)  # weights_only=True: nothing torn, nothing foreign
    if folder.exists():
        read_metrics_csv(folder / 'metrics.csv')
        assert read_run_status(folder) in (None, 'died')
    last = save_dir / 'ckpt' / 'last.ckpt'
    resume = ['--resume', str(last)] if last.exists() else []
    proc = subprocess.run(run + resume, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logs = folder if resume else version_folder(save_dir, 1 if folder.exists() else 0)
    assert_same_run(torch.load(out), reference, logs)
    assert read_run_status(logs) == 'finished'


# ------------------------------------------------------------------ two processes, one folder
TWIN_SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from models import TinyModel
    from pytorch_lightning import Trainer

    save_dir, me, other = sys.argv[1:4]
    open(os.path.join(save_dir, me), 'w').close()
    deadline = time.monotonic() + 60  # start together: both pick a version at once
    while not os.path.exists(os.path.join(save_dir, other)) and time.monotonic() < deadline:
        time.sleep(0.01)
    Trainer(default_save_path=save_dir, progress_bar=False, print_weights_summary=False,
            max_nb_epochs=1, nb_sanity_val_steps=0, early_stop_callback=False,
            add_log_row_interval=1, log_save_interval=1).fit(TinyModel())
""")


def test_two_processes_in_one_save_path_get_their_own_versions(tmp_path):
    script = TWIN_SCRIPT.format(tests=TESTS)
    procs = [subprocess.Popen([sys.executable, '-c', script, str(tmp_path), me, other],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (('a', 'b'), ('b', 'a'))]
    try:
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert sorted(os.listdir(tmp_path / 'lightning_logs')) == ['version_0', 'version_1']
    for version in (0, 1):
        folder = version_folder(tmp_path, version)
        assert read_run_status(folder) == 'finished'
        steps = [r['step'] for r in read_metrics_csv(folder / 'metrics.csv') if 'train_loss' in r]
        assert steps == list(range(1, 9))  # one run's rows, each once: nothing interleaved
        checkpoints = glob.glob(str(folder / 'checkpoints' / '*.ckpt'))
        assert checkpoints
        for path in checkpoints:
            assert saved_batches(path) == 8
        assert not (folder / '.lightning.lock').exists()


@pytest.mark.parametrize('kind, nth', [
    ('to_csv', 2),        # test-tube's first metrics.csv write: the temporary file torn
    ('torch_save', 9),    # a mid-run checkpoint: the temporary file torn
])
def test_sigkill_during_a_write_leaves_nothing_torn_and_resumes_exactly(
        tmp_path, uninterrupted_run, kind, nth):
    check_killed_then_resumed(tmp_path, uninterrupted_run, kind, nth)



def test_sigusr1_twice_then_sigterm_saves_once_and_requeues_once(tmp_path, fake_scontrol):
    path, calls = fake_scontrol
    env = dict(os.environ, SLURM_JOB_ID='4242', PATH=path)
    proc = subprocess.run([sys.executable, '-c', SIGNAL_SCRIPT.format(tests=TESTS), 'usr1',
                           str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls.read_text().split() == ['requeue', '4242']
    folder = tmp_path / 'lightning_logs' / 'version_4242'
    assert read_run_status(folder) == 'interrupted'
    hpc = glob.glob(str(folder / 'checkpoints' / 'hpc_ckpt_*.ckpt'))
    assert [os.path.basename(p) for p in hpc] == ['hpc_ckpt_1.ckpt']
    # sent during the 6th batch, acted on at its save point
    assert torch.load(hpc[0])['lightning']['trainer_state']['total_batches'] == 6
    logged = [r for r in read_metrics_csv(folder / 'metrics.csv') if 'train_loss' in r]
    assert len(logged) == 6

"""The test-tube adapter: a test-tube ``Experiment`` written by one thread of this process.

The training thread only appends rows to a list (about a microsecond). A writer thread hands
them to test-tube in bursts, at most about once per second, and saves (test-tube rewrites
``metrics.csv`` and flushes TensorBoard). Opening (importing test-tube, creating the
experiment) happens in the training thread when the logger opens at the start of ``fit``:
errors surface there, and measured, doing it on the writer thread while the loop runs costs
the loop more (the two threads take turns on the GIL).

Rows logged but not yet saved travel inside every checkpoint (``state_dict``), so a run
killed at any moment and resumed from a checkpoint has exactly the rows of an
uninterrupted run. A hard kill without a resume loses at most the rows of the last second.

The version folder is held by a lock file (``.lightning.lock``: host, pid and the process's
start time). A lock whose owner has finished or died never blocks a later run; two live runs
that share one folder get a ``MisconfigurationException``.
"""
import argparse
import atexit
import contextlib
import csv
import datetime
import json
import math
import os
import socket
import threading
import time
import traceback
import weakref

from ..exceptions import MisconfigurationException
from ..hparams import hparams_to_dict, load_hparams_file, save_hparams_file
from ..utilities import parse_cell, pid_alive
from .base import LightningLoggerBase, rank_zero_only

#: The writer thread hands rows to test-tube and saves at most this often...
SAVE_EVERY_S = 1.0
#: ... and, for long runs whose CSV rewrite gets slow (test-tube rewrites the whole file), at
#: most this share of the time goes to saves (they hold the GIL): a 0.2 s rewrite then runs
#: every 10 s.
SAVE_SHARE = 0.02
#: Longest wait for the writer (opening, a save, stopping). Nothing in logging waits longer.
WAIT_TIMEOUT_S = 120.0
#: The lock's owner touches the lock file this often, so another host can tell it is alive.
HEARTBEAT_S = 30.0
#: A lock written on another host and not touched for this long belongs to a dead run.
STALE_AFTER_S = 4 * HEARTBEAT_S
LOCK_NAME = '.lightning.lock'
#: The run's status in the version folder: running, finished, failed or interrupted.
STATUS_FILE = 'run_status.json'
#: Columns written to metrics.csv only, never as TensorBoard scalars.
CSV_ONLY = frozenset({'step', 'global_step', 'created_at'})

_open_loggers = weakref.WeakSet()


class _OwnDataPath:
    """An Experiment's ``get_data_path``, resolved from its own ``save_dir``: test-tube's
    resolves every Experiment's folder from one module global, the ``save_dir`` of the
    Experiment created last, so with two trainers in one process (other save paths) the
    older one would write its files into the newer one's folder. A class, so it pickles."""

    def __init__(self, save_dir):
        self.save_dir = save_dir

    def __call__(self, exp_name, exp_version):
        return os.path.join(self.save_dir, exp_name, f'version_{exp_version}')


def _pin_folder(exp):
    """Make ``exp`` find its files under its own ``save_dir`` from now on (see
    ``_OwnDataPath``); an Experiment without a ``save_dir`` keeps test-tube's default."""
    if getattr(exp, 'save_dir', None) is not None and 'get_data_path' not in vars(exp):
        exp.get_data_path = _OwnDataPath(exp.save_dir)


class LoggerError(RuntimeError):
    """Writing the logs failed; the message carries test-tube's traceback."""


# ------------------------------------------------------------------------------ helpers
def _process_start(pid):
    """The start time of process ``pid`` (clock ticks after boot), ``None`` where unknown:
    with the pid it tells a live owner from a new process that reuses a dead one's pid."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return int(f.read().rsplit(')', 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def read_metrics_csv(path):
    """The rows of a ``metrics.csv`` as dicts, numbers as ints or floats as written (pandas,
    which test-tube reads with, turns an int column into floats). Empty cells are dropped."""
    try:
        with open(path, newline='') as f:
            return [{k: parse_cell(v) for k, v in row.items() if v != ''}
                    for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []


def _process_gone(record):
    """Whether the process a record names (``host``, ``pid`` and, when known, ``start``: see
    ``_process_start``) has ended: ``True`` when it ran on this host and its pid no longer
    exists or now belongs to a process started at another time; ``False`` when it still runs;
    ``None`` when this host cannot tell (another host, or no pid recorded)."""
    pid = record.get('pid')
    if record.get('host') != socket.gethostname() or not isinstance(pid, int):
        return None
    if not pid_alive(pid):
        return True
    start = _process_start(pid)
    return start is not None and record.get('start') is not None and start != record['start']


def read_run_status(folder):
    """The status the logger recorded in ``folder/run_status.json`` ('running', 'finished',
    'failed' or 'interrupted'), or ``None`` when there is none (or it cannot be read).

    A record that says 'running' is checked against its process: when that process ran on
    this host and is gone (killed by SIGKILL or the OOM killer, so it never recorded how it
    ended), this returns 'died' instead. A run on another host is reported as recorded."""
    try:
        with open(os.path.join(os.fspath(folder), STATUS_FILE)) as f:
            record = json.load(f)
        status = record.get('status')
    except (OSError, ValueError, AttributeError):
        return None
    if status == 'running' and _process_gone(record):
        return 'died'
    return status


def next_free_version(root):
    """Create ``root/version_<n>`` for the next free ``n`` and return ``n``. ``os.mkdir``
    fails when the folder exists, so two runs starting at once never share a version."""
    os.makedirs(root, exist_ok=True)
    taken = [int(d[len('version_'):]) for d in os.listdir(root)
             if d.startswith('version_') and d[len('version_'):].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            os.mkdir(os.path.join(root, f'version_{version}'))
            return version
        except FileExistsError:
            version += 1


class FolderLock:
    """``folder/.lightning.lock`` names the live run that writes ``folder``."""

    def __init__(self, folder):
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False

    def acquire(self):
        me = {'host': socket.gethostname(), 'pid': os.getpid(),
              'start': _process_start(os.getpid()), 'since': time.time()}
        tmp = f'{self.path}.{os.getpid()}.{threading.get_ident()}.tmp'
        with open(tmp, 'w') as f:
            json.dump(me, f)
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # fails if it exists; never a half-written lock
                    self.held = True
                    return
                except FileExistsError:
                    owner = self._owner()
                    if owner is not None and not self._stale(owner):
                        raise MisconfigurationException(
                            f"the log folder {os.path.dirname(self.path)!r} is in use by a "
                            f"live run (pid {owner.get('pid')} on {owner.get('host')}, since "
                            f"{time.ctime(owner.get('since', 0))}). Two runs cannot write one "
                            f"version: give this run another version (Experiment(version=...)"
                            f" or experiment=None for the next free one), or wait for the "
                            f"other run to end.")
                    try:
                        os.remove(self.path)  # its owner is gone
                    except FileNotFoundError:
                        pass
            raise MisconfigurationException(
                f"could not take the log folder lock {self.path!r}: other runs keep taking "
                f"it. Give this run its own version.")
        finally:
            os.remove(tmp)

    def _owner(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: judged by its age below

    def _stale(self, owner):
        gone = _process_gone(owner)
        if gone is not None:
            return gone
        try:  # another host (or unreadable): alive while it keeps touching the file
            return time.time() - os.path.getmtime(self.path) > STALE_AFTER_S
        except FileNotFoundError:
            return True

    def touch(self):
        if self.held:
            os.utime(self.path)

    def release(self):
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


def _repair_after_kill(folder):
    """A run killed while test-tube was creating or saving ``folder`` can leave an empty
    ``meta.experiment`` or no ``meta_tags.csv``; test-tube then refuses the folder. Both are
    rewritten at the next save, so an empty one is removed and a missing one started."""
    meta = os.path.join(folder, 'meta.experiment')
    if os.path.exists(meta) and os.path.getsize(meta) == 0:
        os.remove(meta)
    tags = os.path.join(folder, 'meta_tags.csv')
    if os.path.exists(meta) and not os.path.exists(tags):
        with open(tags, 'w') as f:
            f.write('key,value\n')


def _created_at(walltime):
    """test-tube's ``created_at`` format (UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    stamp = datetime.datetime.fromtimestamp(walltime, datetime.timezone.utc)
    return str(stamp.replace(tzinfo=None))


# ------------------------------------------------------------------------------ the logger
class TestTubeLogger(LightningLoggerBase):
    """Logs to a test-tube ``Experiment`` at ``save_dir/name/version_<n>``: ``metrics.csv``,
    ``meta_tags.csv``, ``hparams.json`` (the typed hyperparameters) and TensorBoard files
    under ``tf/``.

    ``save_dir``: the root folder (a leading ``~`` is expanded to the home folder); ``None``
    uses test-tube's own data folder.
    ``experiment``: an existing ``test_tube.Experiment`` to write into instead. While the
    logger is open, the experiment's own ``log``/``tag``/``save`` go through the logger (so
    rows stay in order and are written off the training thread); ``finalize`` gives them back.
    ``version=None``: the next free version, taken when the logger first opens.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, save_dir=None, name='lightning_logs', version=None, experiment=None,
                 description=None, debug=False):
        if experiment is not None:  # its folder exactly as the Experiment writes it
            save_dir = experiment.save_dir
            name, version = experiment.name, experiment.version
            description, debug = experiment.description, experiment.debug
        elif save_dir is not None:  # as Trainer(default_save_path=...) does
            save_dir = os.path.expanduser(save_dir)
        self.save_dir = None if save_dir is None else os.fspath(save_dir)
        self.name = name
        self._version = version
        self.description = description
        self.debug = debug
        self.user_experiment = experiment
        self._exp = None                # the Experiment the writer thread writes
        self._thread = None             # the writer thread while open
        self._lock = None               # FolderLock while open
        self._resume = None             # a checkpoint's state, applied at the next open
        self._tagged = None            # the hparams logged so far (merged)
        self._pending_tags = []         # tags waiting for the writer
        # every row since the logger opened: (row, step, walltime); the writer hands
        # rows[handed:] to test-tube; rows[:saved - rows_at_open] are on disk
        self._rows, self._handed = [], 0
        self._rows_at_open, self._saved = 0, 0
        self._save_wanted = False
        self._error = None
        self._exp_lock = threading.Lock()       # held while test-tube is called
        self._wake = threading.Condition()      # wakes the writer to stop
        self._stopping = False
        self._next_save = 0.0

    # -------------------------------------------------------------- identity
    @property
    def version(self):
        """The version number (the next free one is taken now if none was given)."""
        if self._version is None:
            self._version = next_free_version(os.path.join(self._parent(), self.name))
        return self._version

    @version.setter
    def version(self, version):
        """Use ``version`` (DDP: the other ranks take the one rank 0 picked)."""
        self._version = version

    def _parent(self):
        if self.save_dir is None:  # test-tube's own data folder
            import test_tube.log
            return os.path.join(os.path.dirname(test_tube.log.__file__), 'test_tube_data')
        return self.save_dir

    @property
    def experiment(self):
        """The user's test-tube Experiment when one was given, else this logger."""
        return self.user_experiment if self.user_experiment is not None else self

    def get_data_path(self, name=None, version=None):
        """Folder of this experiment's files (test-tube's layout)."""
        version = self.version if version is None else version
        return os.path.join(self._parent(), self.name if name is None else name,
                            f'version_{version}')

    @property
    def log_dir(self):
        return self.get_data_path()

    @property
    def is_open(self):
        return self._thread is not None

    # -------------------------------------------------------------- opening
    def _open(self):
        """Take the version folder, open the experiment and start the writer thread. Errors
        (a folder in use, an unreadable experiment) are raised here, at the start of fit."""
        if not self.debug:
            try:
                folder = self.log_dir
                os.makedirs(folder, exist_ok=True)
            except OSError as err:
                raise LoggerError(
                    f"cannot create the log folder under {self.save_dir!r} ({err}). Pass a "
                    f"writable default_save_path (or save_dir), or experiment=False.") from err
            self._lock = FolderLock(folder)
            self._lock.acquire()
        self._rows, self._handed, self._error, self._pending_tags = [], 0, None, []
        self._stopping = False
        try:
            self._open_experiment()
        except BaseException:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            raise
        self._next_save = time.monotonic() + SAVE_EVERY_S  # a short run saves once, at its end
        exp = self.user_experiment
        if exp is not None:  # its own calls go through the logger while it is open
            exp.log, exp.tag, exp.save = self.log, self.tag, self.save
        _open_loggers.add(self)
        self._thread = threading.Thread(target=self._serve, name='lightning-log-writer',
                                        daemon=True)
        self._thread.start()

    def _open_experiment(self):
        """The Experiment to write, with the rows a resume keeps."""
        resume, self._resume = self._resume, None
        exp, user = self._exp, self.user_experiment
        self._exp = None  # set again once opened
        reread = resume is not None
        if resume is not None or exp is None or exp.version != self.version:
            # a debug Experiment has no version (test-tube gives it none): it is used as is
            exp = user if user is not None and user.version in (None, self.version) else None
            if exp is None and user is not None:
                print(f"resuming: logging continues in version {self.version} of {self.name!r} "
                      f"(the checkpoint's), not in version {user.version} of the Experiment "
                      f"passed in.")
        if exp is None:
            from test_tube import Experiment
            if not self.debug:
                _repair_after_kill(self.log_dir)
            # a deep TensorBoard queue: with test-tube's 10, a row's scalars wait for the
            # event thread
            exp = Experiment(save_dir=self.save_dir, name=self.name, version=self.version,
                             description=self.description, debug=self.debug, max_queue=10000,
                             purge_step=None if resume is None else resume['purge_step'])
            if exp.debug and not self.debug:
                raise LoggerError(
                    f"test-tube could not open {self.log_dir!r}: its meta.experiment or "
                    f"meta_tags.csv is unreadable. Pick another version or repair the folder.")
            reread = reread or os.path.exists(os.path.join(self.log_dir, 'metrics.csv'))
        elif resume is not None and not exp.debug:  # the user's open Experiment: reopen its
            exp.close()            # TensorBoard file at the next scalar, hiding the killed
            exp.purge_step = resume['purge_step']  # run's later events (debug: it has none)
        _pin_folder(exp)
        self._exp = exp
        if not exp.debug:
            # test-tube reads metrics.csv and meta_tags.csv with pandas, which turns ints
            # into floats (or strings): read the rows again, and the tags from the typed copy
            if reread:
                exp.metrics = read_metrics_csv(os.path.join(self.log_dir, 'metrics.csv'))
            typed = load_hparams_file(self.log_dir)
            for key, value in ({} if typed is None else typed['values']).items():
                current = exp.tags.get(key, value)
                if current == value or str(current) == str(value):  # the same, retyped
                    exp.tags[key] = value
        if resume is not None:
            del exp.metrics[resume['saved']:]
            for row, step, walltime in resume['carried']:  # rows the disk may not have
                self._hand_over(row, step, walltime)
            self._save_now()
        self._rows_at_open = self._saved = len(exp.metrics)

    # -------------------------------------------------------------- the writer thread
    def _serve(self):
        next_beat = time.monotonic() + HEARTBEAT_S
        while True:
            now = time.monotonic()
            with self._wake:
                if not self._stopping:
                    due = self._next_save - now
                    self._wake.wait(min(max(due, 0.05), HEARTBEAT_S) if due > 0 else SAVE_EVERY_S)
                if self._stopping:
                    return
            now = time.monotonic()
            try:
                if (len(self._rows) > self._handed or self._save_wanted) and now >= self._next_save:
                    with self._exp_lock:
                        self._drain()
                        self._save_now()
                if now >= next_beat and self._lock is not None:
                    self._lock.touch()
                    next_beat = now + HEARTBEAT_S
            except BaseException as err:
                self._error = err
                return

    def _hand_over(self, row, step, walltime):
        """(caller holds ``_exp_lock``) One row to test-tube: scalars to TensorBoard and the
        CSV; the step columns and the time the row was logged to the CSV only."""
        exp = self._exp
        scalars = {k: v for k, v in row.items() if k not in CSV_ONLY}
        type(exp).log(exp, scalars, step, walltime)
        if exp.metrics and not exp.debug:
            # pandas writes a NaN as an empty cell, which reads back as "not logged": a
            # diverged val_loss must stay NaN in metrics.csv, so the text 'nan' is written
            extra = {k: 'nan' for k, v in exp.metrics[-1].items()
                     if isinstance(v, float) and math.isnan(v)}
            extra.update((k, v) for k, v in row.items() if k in CSV_ONLY)
            if step is not None:
                extra['step'] = step
            extra['created_at'] = _created_at(walltime)
            exp.metrics[-1].update(extra)

    def _drain(self):
        """(caller holds ``_exp_lock``) Every tag and row logged so far to test-tube."""
        while self._pending_tags:
            type(self._exp).tag(self._exp, self._pending_tags.pop(0))
        count = len(self._rows)
        for row, step, walltime in self._rows[self._handed:count]:
            self._hand_over(row, step, walltime)
        self._handed = count

    def _save_now(self):
        """(caller holds ``_exp_lock``) test-tube's save; spaced by its cost."""
        self._save_wanted = False
        saved = len(self._exp.metrics)
        start = time.monotonic()
        type(self._exp).save(self._exp)
        self._saved = saved
        self._next_save = start + max(SAVE_EVERY_S, (time.monotonic() - start) / SAVE_SHARE)

    def _raise_error(self):
        if self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, (LoggerError, MisconfigurationException)):
                raise err
            text = ''.join(traceback.format_exception(type(err), err, err.__traceback__))
            raise LoggerError(f"test-tube failed while writing {self.log_dir!r}:\n{text}") from err

    @contextlib.contextmanager
    def _locked(self):
        """The experiment lock, taken with a timeout (a save holds it for milliseconds)."""
        if not self._exp_lock.acquire(timeout=WAIT_TIMEOUT_S):
            raise LoggerError(f"the log writer held {self.log_dir!r} for more than "
                              f"{WAIT_TIMEOUT_S:.0f} s.")
        try:
            yield
        finally:
            self._exp_lock.release()

    # -------------------------------------------------------------- writes (cheap)
    @rank_zero_only
    def log(self, metrics, global_step=None, walltime=None):
        """Queue one metrics row. ``global_step`` is the TensorBoard step and the CSV's
        ``step`` column. Keys ``step`` and ``global_step`` in ``metrics`` are CSV columns
        only. The writer thread hands rows to test-tube about once per second."""
        if self._thread is None:
            self._open()
        elif self._error is not None:
            self._raise_error()
        self._rows.append((dict(metrics), global_step, time.time() if walltime is None else walltime))

    log_metrics = log

    @rank_zero_only
    def tag(self, tags):
        """Add experiment tags (hyperparameters); written with the next save."""
        if self._thread is None:
            self._open()
        self._pending_tags.append(dict(tags))
        self._save_wanted = True

    @rank_zero_only
    def log_hyperparams(self, params):
        """Open the logger (at fit start: a folder in use is reported before the first
        batch) and tag ``params`` (a Namespace, dict or object), with a typed copy in
        ``hparams.json`` beside ``meta_tags.csv`` (ints stay ints, a dict stays a dict).
        Called again, it adds to (or updates) the tags and the typed copy."""
        if self._thread is None:
            self._open()
            self._write_status('running')
        flat = hparams_to_dict(params)
        if not flat:
            return
        self.tag(flat)
        if self._tagged:  # merged with what earlier calls gave, in the first call's container
            flat = {**hparams_to_dict(self._tagged), **flat}
            params = flat if isinstance(self._tagged, dict) else argparse.Namespace(**flat)
        self._tagged = params
        if not self.debug:
            save_hparams_file(self.log_dir, params)

    @rank_zero_only
    def request_save(self):
        """Ask for a save: the writer does it within about a second (merged with others).
        What ``MetricsLogging`` asks for every ``log_save_interval`` batches."""
        if self._thread is None:
            self._open()
        self._save_wanted = True

    @rank_zero_only
    def save(self):
        """Write everything logged so far; saved when it returns (see ``flush``)."""
        self.flush()

    # -------------------------------------------------------------- synchronous
    @rank_zero_only
    def flush(self):
        """Write everything logged so far to disk now; returns the number of rows the
        experiment holds. Raises ``LoggerError`` if a write failed."""
        if self._thread is None:
            return self._saved
        self._raise_error()
        with self._locked():
            self._drain()
            self._save_now()
        return self._saved

    @rank_zero_only
    def finalize(self, status=None):
        """Save everything, stop the writer thread and release the folder; a user's
        Experiment gets its own methods back (and stays open). Logging again afterwards
        re-opens the same version. ``status`` (``'finished'``, ``'failed'``,
        ``'interrupted'``) is recorded in ``run_status.json`` in the version folder once
        the final save is done; ``'finished'`` becomes ``'failed'`` when that save (or the
        writer thread) failed. ``None`` keeps what is recorded."""
        thread = self._thread
        if thread is None:
            return
        exp = self.user_experiment
        saved = False
        try:
            with self._wake:
                self._stopping = True
                self._wake.notify()
            thread.join(WAIT_TIMEOUT_S)
            if thread.is_alive():
                raise LoggerError(f"the log writer for {self.log_dir!r} did not stop within "
                                  f"{WAIT_TIMEOUT_S:.0f} s.")
            self._raise_error()
            with self._locked():
                self._drain()
                self._save_now()
                if self._exp is not exp:
                    self._exp.close()
            saved = True
        finally:
            try:
                if status == 'finished' and not saved:
                    status = 'failed'  # the final save (or the writer thread) failed
                if status is not None:  # recorded once the rows are saved (or could not be)
                    self._write_status(status)
            finally:
                self._thread = None
                if exp is not None:
                    for attr in ('log', 'tag', 'save'):
                        exp.__dict__.pop(attr, None)
                if self._lock is not None:
                    self._lock.release()
                    self._lock = None
                _open_loggers.discard(self)

    # -------------------------------------------------------------- checkpoints
    def state_dict(self, step, durable=False):
        """What a checkpoint records: the version, the rows the experiment holds, which of
        them are on disk, the rows that may not be (carried in the checkpoint), and the
        TensorBoard step. Never waits for a save unless ``durable`` (SLURM preemption)."""
        if durable:
            self.flush()
        rows = self._rows
        first = max(0, self._saved - self._rows_at_open)
        # rows sharing the first carried row's step travel too: a resume hides TensorBoard
        # events by step, from the first carried one on
        while 0 < first < len(rows) and rows[first - 1][1] == rows[first][1]:
            first -= 1
        carried = [(dict(r), s, t) for r, s, t in rows[first:]]
        return {'name': self.name, 'version': self.version,
                'rows': self._rows_at_open + len(rows), 'saved': self._rows_at_open + first,
                'carried': carried, 'step': step}

    def load_state_dict(self, state):
        """Continue the checkpoint's version: at the next open the experiment keeps the rows
        that were on disk at the checkpoint, gets the carried rows again, and TensorBoard
        hides the events logged after it."""
        self.finalize()
        self._version = state['version']
        carried = state.get('carried', [])
        first_step = next((s for _, s, _ in carried if s is not None), None)
        self._resume = {'saved': state.get('saved', state['rows']), 'carried': carried,
                        'purge_step': first_step if first_step is not None else state['step'] + 1}

    def _write_status(self, status):
        """``run_status.json``: whether the run writing this version is running, finished,
        failed or was interrupted (a later run of the same version reads it), with the host,
        pid and start of the process that wrote it (``read_run_status`` checks them)."""
        if self.debug:
            return
        record = {'status': status, 'host': socket.gethostname(), 'pid': os.getpid(),
                  'start': _process_start(os.getpid()), 'at': time.time()}
        path = os.path.join(self.log_dir, STATUS_FILE)
        with open(path + '.tmp', 'w') as f:
            json.dump(record, f)
        os.replace(path + '.tmp', path)

    def run_status(self):
        """What ``run_status.json`` in this version's folder records (see ``finalize``), or
        ``None``: how the last run that wrote this version ended ('died' for a run that says
        'running' but whose process on this host is gone; see ``read_run_status``)."""
        return None if self._version is None else read_run_status(self.log_dir)

    def __getstate__(self):
        """A logger pickles closed: the writer thread, the locks, the experiment object and
        the rows of the open run stay behind; the copy reopens its version when it logs."""
        state = dict(self.__dict__)
        for name in ('_thread', '_lock', '_exp', '_exp_lock', '_wake', 'user_experiment'):
            state[name] = None
        state.update(_rows=[], _handed=0, _pending_tags=[], _error=None, _stopping=False)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._exp_lock, self._wake = threading.Lock(), threading.Condition()

    def __repr__(self):
        return (f'TestTubeLogger(save_dir={self.save_dir!r}, name={self.name!r}, '
                f'version={self._version!r})')


@atexit.register
def _finalize_open_loggers():
    """A logger still open when the interpreter exits saves what it holds."""
    for logger in list(_open_loggers):
        logger.finalize()

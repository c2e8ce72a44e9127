"""The test-tube adapter: every ``Experiment`` write happens in a writer process.

Why a process: on a CPU a test-tube ``log()`` costs ~150 us (TensorBoard scalars) and ``save()``
rewrites whole CSV files (several ms, growing with the run). A thread does not help because of
the GIL (measured: no gain). So rows are pickled (~5 us) into a pipe and one long-lived writer
process per Python session (``_writer.py``) does the work on another core. Replies are awaited
only at ``flush``/``finalize``. The pipe's buffer bounds how far the writer can fall behind:
when it is full, the training thread waits (back-pressure, nothing dropped).
"""
import atexit
import io
import os
import pickle
import subprocess
import sys
import threading
import time

_PROTOCOL = pickle.HIGHEST_PROTOCOL
#: Rows wait at most this long in the training process before going to the writer together.
#: Every send wakes the writer, and on a machine whose cores torch keeps busy each wake-up
#: displaces a training thread: measured (tiny MLP, 2 cores, ~1 s fits) the training thread
#: waited 11.6 ms per fit for a core at 0.1 s, 4.7 ms at 0.5 s, 6.6 ms at 1.0 s. The writer
#: holds rows until its next save (at most one per second) anyway, so 0.5 s delays nothing a
#: reader sees; a hard kill of the training process loses at most the last 0.5 s of rows.
ROW_BATCH_S = 0.5
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LoggerError(RuntimeError):
    """The writer process failed; the message carries its traceback."""


class _WriterService:
    """One writer process shared by every logger of this Python process."""

    _instance = None
    _lock = threading.Lock()

    @classmethod
    def get(cls):
        with cls._lock:
            inst = cls._instance
            if inst is None or inst.proc.poll() is not None or inst.pid != os.getpid():
                inst = cls._instance = cls()
            return inst

    def __init__(self):
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get('PYTHONPATH')) if p)
        self.pid = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'pytorch_lightning.loggers._writer'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env,
            # its own process group: a Ctrl-C in the terminal interrupts training, not the
            # writer, which still has rows to save (it exits when this process closes the pipe)
            start_new_session=True)
        # buffered ends: a raw pipe may read or write only part of a large message
        self._requests = io.BufferedWriter(self.proc.stdin)
        self._replies = io.BufferedReader(self.proc.stdout)
        self._pending = {}
        atexit.register(self.shutdown)

    def send(self, msg):
        try:
            self._requests.write(pickle.dumps(msg, _PROTOCOL))
            self._requests.flush()
        except (BrokenPipeError, OSError) as err:
            raise LoggerError(
                f"the log-writer process exited (code {self.proc.poll()}); see its error "
                f"output above. Logging cannot continue.") from err

    def await_reply(self, kind, key):
        """Block until the reply ``(kind, key)`` arrives; return its payload."""
        while (kind, key) not in self._pending:
            try:
                got = pickle.load(self._replies)
            except EOFError as err:
                raise LoggerError(
                    f"the log-writer process exited (code {self.proc.wait()}) before answering "
                    f"{kind!r} for {key!r}; see its error output above.") from err
            self._pending[(got[0], got[1])] = got[2:]
        payload, error = self._pending.pop((kind, key))
        if error:
            raise LoggerError(f"test-tube failed while writing {key!r}:\n{error}")
        return payload

    def shutdown(self):
        if self.proc.poll() is None and self.pid == os.getpid():
            try:
                self.send(('exit',))
                self._requests.close()
            except LoggerError:
                pass  # already gone: nothing left to flush
            self.proc.wait(timeout=300)


class TestTubeLogger:
    """Logs to a test-tube ``Experiment`` at ``save_dir/name/version_<n>`` (metrics.csv,
    meta_tags.csv and TensorBoard files under ``tf/``).

    ``experiment``: an existing ``test_tube.Experiment`` to write into instead. While a fit
    runs, its ``log``/``tag``/``save`` are routed through the writer (so rows stay in order)
    and on ``finalize`` its in-memory ``metrics``/``tags`` are refreshed from what was written.
    With ``version=None`` the next free version is used.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, save_dir=None, name='lightning_logs', version=None, experiment=None,
                 description=None, debug=False):
        if experiment is not None:
            save_dir = experiment.save_dir
            name, version = experiment.name, experiment.version
            description, debug = experiment.description, experiment.debug
        self.save_dir = save_dir
        self.name = name
        self._version = version
        self.description = description
        self.debug = debug
        self.user_experiment = experiment
        self._service = None
        self._key = None
        self._open_acknowledged = False
        self._tagged = False
        self._resume = None  # (rows to keep, TensorBoard purge step) for the next open
        self._rows, self._send_rows_at = [], 0.0  # rows not yet sent to the writer
        self._save_asked = False  # a save() waiting to go out with the next rows
        # rows the experiment holds = rows it had when opened (after a resume's truncation)
        # + rows logged since; counted here so a checkpoint need not wait for the writer
        self._rows_at_open, self._rows_logged, self._truncate_to = None, 0, None

    # -------------------------------------------------------------- lifecycle
    def _ensure_open(self):
        if self._service is not None:
            return
        exp = self.user_experiment
        if exp is not None and not exp.debug:
            exp.save()  # so the writer's Experiment can load this version from disk
        self._service = _WriterService.get()
        self._open_acknowledged = False
        self._key = f'{id(self)}:{self.save_dir}:{self.name}'
        kwargs = dict(save_dir=self.save_dir, name=self.name, version=self._version,
                      description=self.description, debug=self.debug)
        resume, self._resume = self._resume, None
        self._rows_at_open, self._rows_logged = None, 0
        self._truncate_to = None if resume is None else resume[0]
        if resume is not None:
            kwargs['purge_step'] = resume[1]  # TensorBoard hides events from the killed run
        self._service.send(('open', self._key, kwargs))
        if resume is not None:
            self._service.send(('truncate', self._key, resume[0]))
        if exp is not None:  # route the user's own calls through the writer while open
            exp.log, exp.tag, exp.save = self.log, self.tag, self.save

    def _await_open(self, service=None):
        if not self._open_acknowledged:
            self._open_acknowledged = True
            opened = (service or self._service).await_reply('opened', self._key)
            if opened is not None:
                self._version, rows = opened
                if self._truncate_to is not None:
                    rows = min(rows, self._truncate_to)
                self._rows_at_open = rows

    @property
    def version(self):
        """The experiment version number (waits for the writer to open it)."""
        if self._version is None:
            self._ensure_open()
            self._await_open()
        return self._version

    @property
    def experiment(self):
        """The user's test-tube Experiment when one was given, else this logger."""
        return self.user_experiment if self.user_experiment is not None else self

    def get_data_path(self, name=None, version=None):
        """Folder of this experiment's files (test-tube's layout)."""
        name = self.name if name is None else name
        version = self.version if version is None else version
        if self.save_dir is None:
            import test_tube.log
            root = os.path.join(os.path.dirname(test_tube.log.__file__), 'test_tube_data')
        else:
            root = self.save_dir
        return os.path.join(root, name, f'version_{version}')

    @property
    def log_dir(self):
        return self.get_data_path()

    # -------------------------------------------------------------- writes (cheap, async)
    def log(self, metrics, global_step=None, walltime=None):
        """Queue one metrics row (numbers only; tensors are converted by the caller).
        Rows go to the writer in batches at most ``ROW_BATCH_S`` apart (fewer wake-ups of
        the writer, so it disturbs training less); any other call sends them first."""
        self._ensure_open()
        self._rows.append((dict(metrics), global_step))
        self._rows_logged += 1
        now = time.monotonic()
        if now >= self._send_rows_at:
            self._send_rows_at = now + ROW_BATCH_S
            self._send_rows()

    def _send_rows(self):
        if self._rows:
            rows, self._rows = self._rows, []
            then_save, self._save_asked = self._save_asked, False
            self._service.send(('rows', self._key, rows, then_save))
        elif self._save_asked:
            self._save_asked = False
            self._service.send(('save', self._key))

    log_metrics = log

    def tag(self, tags):
        """Queue experiment tags (hyperparameters)."""
        self._ensure_open()
        self._send_rows()
        self._service.send(('tag', self._key, dict(tags)))

    def log_hyperparams(self, params):
        """Tag ``params`` once per logger."""
        if params and not self._tagged:
            self._tagged = True
            self.tag(params)

    def save(self):
        """Queue a test-tube ``save()`` (CSV files and TensorBoard flush). While rows are
        waiting for their batch to go out (at most ``ROW_BATCH_S``), the request goes with
        them: one pipe write, one wake-up of the writer. The writer merges saves to at most
        one per second anyway."""
        self._ensure_open()
        self._save_asked = True
        if not self._rows or time.monotonic() >= self._send_rows_at:
            self._send_rows()

    # -------------------------------------------------------------- synchronous
    def flush(self):
        """Block until everything queued is on disk; raise ``LoggerError`` if any write
        failed. Returns the number of metric rows the experiment holds."""
        self._ensure_open()
        self._send_rows()
        self._await_open()
        self._service.send(('flush', self._key))
        return self._service.await_reply('flushed', self._key)

    # -------------------------------------------------------------- checkpoints
    def state_dict(self, step, durable=False):
        """What a checkpoint records: the version, how many metric rows the experiment
        holds, and the TensorBoard step. The rows are counted here and a save is queued, so
        the checkpoint does not wait for the writer: if the training process dies, the
        writer still saves every row it was sent. With ``durable`` (SLURM preemption, where
        the whole job ends next) it waits until they are on disk."""
        if durable:
            rows = self.flush()
        else:
            self.save()
            self._send_rows()  # now, not with the next batch: the count covers them
            self._await_open()  # the version and starting row count (long answered)
            rows = self._rows_at_open + self._rows_logged
        return {'name': self.name, 'version': self.version, 'rows': rows, 'step': step}

    def load_state_dict(self, state):
        """Continue the checkpoint's version: rows after ``state['rows']`` are dropped and
        TensorBoard events after ``state['step']`` hidden when the experiment next opens."""
        self.finalize()
        if self.user_experiment is not None and self.user_experiment.version != state['version']:
            print(f"resuming: logging continues in version {state['version']} of "
                  f"{self.name!r} (the checkpoint's), not in version "
                  f"{self.user_experiment.version} of the Experiment passed in.")
        self._version = state['version']
        self._resume = (state['rows'], state['step'] + 1)

    def finalize(self):
        """Save, close the writer's Experiment and wait for it; refresh a user Experiment.
        Logging again afterwards re-opens the same version."""
        if self._service is None:
            return
        exp = self.user_experiment
        if exp is not None:  # undo the routing first, whatever happens next
            for attr in ('log', 'tag', 'save'):
                exp.__dict__.pop(attr, None)
        self._send_rows()
        service, key = self._service, self._key
        self._service = None
        self._await_open(service)
        service.send(('close', key, exp is not None))  # rows come back only to refresh exp
        state = service.await_reply('closed', key)
        if exp is not None and state is not None:
            exp.metrics, exp.tags = state['metrics'], state['tags']

    def __repr__(self):
        return f'TestTubeLogger(save_dir={self.save_dir!r}, name={self.name!r}, version={self._version!r})'

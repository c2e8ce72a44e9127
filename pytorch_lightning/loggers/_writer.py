"""The log-writer process: owns test-tube ``Experiment`` objects and does their slow work
(TensorBoard scalars, CSV rewrites) on another core, so the training thread never waits.

Run as ``python -m pytorch_lightning.loggers._writer``. It reads pickled requests from stdin
and writes pickled replies to its original stdout; anything printed goes to stderr.

Requests: ('open', key, kwargs) ('rows', key, [(row, step), ...], then_save) ('tag', key, dict)
('save', key) ('truncate', key, nb_rows) ('flush', key) ('close', key, want_state) ('exit',).
Replies (only to open/flush/close/exit): (kind, key, payload, error_text_or_None); 'opened'
carries (version, rows already in the experiment), 'flushed' the row count, 'closed' the
experiment's metrics and tags when asked for (else None).
"""
import fcntl
import os
import pickle
import signal
import sys
import threading
import time
import traceback

#: Save requests closer together than this are merged into one, done once the interval has
#: passed (or at the next flush/close). test-tube's save() rewrites every CSV in full, so its
#: cost grows with the run; merged, it is bounded to one save per interval. The first merged
#: save of an experiment also waits this long after it is opened.
SAVE_EVERY_S = 1.0
#: ... and, for long runs whose CSV rewrite gets slow, at most this share of the writer's time
#: goes to merged saves (a 0.5 s rewrite of 100k rows then runs every 10 s, not every second).
SAVE_SHARE = 0.05


class _Writer:
    def __init__(self, replies):
        from test_tube import Experiment
        self.Experiment = Experiment
        self.replies = replies
        self.experiments, self.errors = {}, {}
        # key -> monotonic time before which no merged save runs (see save_now)
        self.next_save, self.deferred = {}, set()
        self.rows = {}  # key -> rows received but not yet given to test-tube
        self.folder_locks = {}
        self.lock = threading.Lock()  # shared with the thread doing deferred saves
        self.wake = threading.Condition(self.lock)  # tells that thread a save was deferred

    def reply(self, kind, key, payload=None):
        if self.replies is None:
            return
        try:
            pickle.dump((kind, key, payload, self.errors.pop(key, None)), self.replies,
                        protocol=pickle.HIGHEST_PROTOCOL)
            self.replies.flush()
        except BrokenPipeError:
            # the training process is gone (killed): nobody is left to answer, but the rows
            # it sent are still read and saved before this process exits at EOF
            self.replies = None

    def guarded(self, key, fn, *args):
        try:
            return fn(*args)
        except Exception:  # reported to the training process at its next flush/close
            self.errors.setdefault(key, traceback.format_exc())
            return None

    @staticmethod
    def _lock_folder(folder):
        """Hold an exclusive lock on an experiment folder while writing it. A resumed run
        waits here until the writer of the run it replaces (killed, still saving what it
        had) has finished, so the two never write the same files at once."""
        os.makedirs(folder, exist_ok=True)
        handle = open(os.path.join(folder, '.writer.lock'), 'w')
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    def _folder(self, kwargs):
        import test_tube.log
        root = kwargs.get('save_dir')
        if root is None:
            root = os.path.join(os.path.dirname(test_tube.log.__file__), 'test_tube_data')
        return os.path.join(root, kwargs.get('name', 'default'), f"version_{kwargs['version']}")

    def open(self, key, kwargs):
        lock = None
        if kwargs.get('version') is not None and not kwargs.get('debug'):
            lock = self._lock_folder(self._folder(kwargs))
        # a deep TensorBoard queue: with test-tube's 10, every scalar waits for the event
        # thread (measured 200 -> 120 us of CPU per 3-key row here); 10,000 events (~1 MB)
        # hold a burst of rows with many metrics each without that wait
        exp = self.Experiment(max_queue=10000, **kwargs)
        if lock is None and not exp.debug:
            lock = self._lock_folder(self._folder(dict(kwargs, version=exp.version)))
        self.folder_locks[key] = lock
        if exp.debug and not kwargs.get('debug'):
            raise RuntimeError(
                f"test-tube could not open experiment {kwargs!r}: its folder exists but "
                f"meta.experiment/meta_tags.csv are unreadable. Call experiment.save() before "
                f"fit or pick another version.")
        return exp

    def drain(self, key):
        """Give test-tube the rows held for ``key``. This happens in bursts, with the merged
        save (at most about once per SAVE_EVERY_S) and at flush/close, not as rows arrive:
        in one A/B of 12 fits each on 2 cores that torch keeps busy, handing rows over on
        arrival (10 wake-ups a second) kept the training thread waiting for a core 17 ms per
        1 s fit, bursts 7 ms; a fit of ~1 s then leaves most of the work for close."""
        rows = self.rows.pop(key, None)
        exp = self.experiments.get(key)
        if rows and exp is not None:
            for row, step in rows:
                self.guarded(key, exp.log, row, step)

    def save_now(self, key):
        self.drain(key)
        self.deferred.discard(key)
        start = time.monotonic()
        self.guarded(key, self.experiments[key].save)
        took = time.monotonic() - start
        # test-tube rewrites the whole CSV, so a save grows with the run: space merged saves
        # so they take at most SAVE_SHARE of the writer's time (at least SAVE_EVERY_S apart)
        self.next_save[key] = start + max(SAVE_EVERY_S, took / SAVE_SHARE)

    def defer(self, key):
        """Save ``key`` when its next merged save is due (caller holds the lock). The saving thread is woken only for a key not already waiting: each wake-up
        can displace a training thread on a busy machine."""
        if key not in self.deferred:
            self.deferred.add(key)
            self.wake.notify()

    def save_merged(self, key):
        if time.monotonic() >= self.next_save.get(key, float('-inf')):
            self.save_now(key)
        else:
            self.defer(key)

    def save_deferred_forever(self):
        """Does the deferred saves when they fall due, sleeping in between: it wakes only
        when a save is due or newly deferred, never while the writer is idle (each wake-up
        can displace a training thread on a machine whose cores torch keeps busy)."""
        with self.wake:
            while True:
                if not self.deferred:
                    self.wake.wait()
                    continue
                now = time.monotonic()
                due = {k: self.next_save.get(k, float('-inf')) for k in self.deferred}
                for key in [k for k, at in due.items() if at <= now]:
                    self.save_now(key)
                pending = [at for k, at in due.items() if at > now and k in self.deferred]
                if pending:
                    self.wake.wait(min(pending) - now)

    def close(self, key, want_state=False):
        self.drain(key)
        self.deferred.discard(key)
        self.next_save.pop(key, None)
        exp = self.experiments.pop(key, None)
        if exp is None:
            return None
        self.guarded(key, exp.save)
        self.guarded(key, exp.close)
        lock = self.folder_locks.pop(key, None)
        if lock is not None:
            lock.close()  # releases the folder for the next writer
        return {'metrics': exp.metrics, 'tags': exp.tags} if want_state else None

    def handle(self, msg):
        """Carry out one request; False once the writer should exit."""
        kind, key = msg[0], (msg[1] if len(msg) > 1 else None)
        exp = self.experiments.get(key)
        if kind == 'rows':
            if exp is not None:  # held, handed to test-tube with the next (merged) save
                self.rows.setdefault(key, []).extend(msg[2])
                if msg[3]:  # a save was asked for with these rows
                    self.save_merged(key)
                else:
                    self.defer(key)
        elif kind == 'save':
            if exp is not None:
                self.save_merged(key)
        elif kind == 'tag':
            if exp is not None:
                self.drain(key)
                self.guarded(key, exp.tag, msg[2])
        elif kind == 'open':
            exp = self.guarded(key, self.open, key, msg[2])
            if exp is not None:
                self.experiments[key] = exp
                # nobody reads the CSV files in a run's first second: the first merged save
                # waits (a short fit then saves once, at its end)
                self.next_save[key] = time.monotonic() + SAVE_EVERY_S
            self.reply('opened', key, None if exp is None else (exp.version, len(exp.metrics)))
        elif kind == 'flush':
            if exp is not None:
                self.save_now(key)
            self.reply('flushed', key, None if exp is None else len(exp.metrics))
        elif kind == 'truncate':  # resume: drop rows logged after the checkpoint
            if exp is not None:
                self.drain(key)
                del exp.metrics[msg[2]:]
                self.save_now(key)
        elif kind == 'close':
            self.reply('closed', key, self.close(key, msg[2]))
        elif kind == 'exit':
            for k in list(self.experiments):
                self.close(k)
            self.reply('exited', None)
            return False
        return True

    def serve(self, requests):
        threading.Thread(target=self.save_deferred_forever, daemon=True).start()
        while True:
            try:
                msg = pickle.load(requests)
            except EOFError:  # the training process is gone: save what we have, then leave
                with self.lock:
                    for key in list(self.experiments):
                        self.close(key)
                return
            with self.lock:
                if not self.handle(msg):
                    return


#: The writer runs at a lower CPU priority: logging must never take a core from training
#: (on a 2-core machine torch's own threads use both; measured: less slowdown than at 0).
NICENESS = 10


def main():
    # The writer lives exactly as long as its pipe: it saves everything and exits at EOF,
    # which comes when the training process ends, however it ends. So signals meant for the
    # job (SLURM's SIGTERM, Ctrl-C's SIGINT) must not kill it before it has saved.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(NICENESS)
    replies = os.fdopen(os.dup(1), 'wb')
    os.dup2(2, 1)  # stray prints from libraries go to stderr, never into the reply stream
    sys.stdout = sys.stderr
    _Writer(replies).serve(sys.stdin.buffer)


if __name__ == '__main__':
    main()

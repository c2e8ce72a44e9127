"""A child process never outlives the process that started it.

The ranks that ``fit`` spawns and the trials of a local sweep run in sessions of their own (so
a terminal's Ctrl-C reaches them only through their parent, which decides how to stop them).
If that parent is killed outright (SIGKILL, an out-of-memory kill), nothing would tell them to
stop. Each of them therefore watches its parent: once the parent pid is no longer its own
parent (it died and the child was handed to another process), the child ends itself.

Standard library only: the DDP worker imports it before torch.
"""
import os
import signal
import threading
import time

#: How often a watcher looks at its parent.
PARENT_CHECK_S = 1.0
#: A sweep's local runner puts its pid here in each trial's environment; a ``Trainer`` created
#: in that trial (the trial process itself, not a process it starts) watches that pid.
SWEEP_PARENT_ENV = 'PL_SWEEP_PARENT_PID'
#: How long an orphaned trial has, after SIGTERM, to save its logs and checkpoints.
TRIAL_GRACE_S = 30.0

_watching = set()
_watching_lock = threading.Lock()


def watch_parent(parent_pid, on_gone, interval_s=PARENT_CHECK_S):
    """Call ``on_gone()`` from a daemon thread once ``parent_pid`` is no longer this process's
    parent. Returns whether a watcher was started: ``False`` when ``parent_pid`` is not the
    parent now (the pid was inherited from further up, or the parent is already gone and the
    caller must decide), or when this process already watches it."""
    with _watching_lock:
        if os.getppid() != parent_pid or parent_pid in _watching:
            return False
        _watching.add(parent_pid)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        on_gone()

    threading.Thread(target=watch, name='pl-parent-watch', daemon=True).start()
    return True


def end_orphan(grace_s):
    """End this process because its parent is gone: SIGTERM first (a running ``fit`` saves its
    logs and pending checkpoints, then dies of it); whatever is still alive ``grace_s``
    seconds later is killed, with its process group when this process leads one (its
    DataLoader workers and other helpers). Called from a watcher thread; never returns."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    if os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os._exit(1)


def watch_sweep_parent():
    """In a trial started by a local sweep (``SWEEP_PARENT_ENV`` names this process's
    parent): end this trial, as ``end_orphan`` does, if the sweep dies without stopping it.
    Cheap and idempotent; the ``Trainer`` calls it when it is created."""
    pid = os.environ.get(SWEEP_PARENT_ENV, '')
    if pid.isdigit():
        watch_parent(int(pid), lambda: end_orphan(TRIAL_GRACE_S))

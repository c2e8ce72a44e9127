"""One rank started by ``spawn_ranks``:
``python -m pytorch_lightning.placement._worker WORKDIR RANK PARENT_PID``.

It restores the parent's ``sys.path``, unpickles the function from ``WORKDIR/payload.pkl``
and calls it. Rank 0 writes what it returned to ``WORKDIR/result.pkl``. A rank whose function
raises prints the traceback to its stderr, writes ``WORKDIR/error-<RANK>.pkl`` (the pickled
exception chain, the traceback text, the time) and exits with code 1. The files are written
under a temporary name and renamed, so the parent never reads half of one.

A rank never outlives the process that started it: a watcher thread notices when the parent
is gone (the parent pid is no longer ours), removes ``WORKDIR``, sends this process SIGTERM
(a running ``fit`` saves its logs on it) and, if it is still alive ``PARENT_GONE_GRACE_S``
later, kills its whole process group (the rank and any helper processes it started).

This module imports only the standard library and ``launch``; torch is imported only if the
function needs it.
"""
import os
import pickle
import shutil
import signal
import sys
import threading
import time
import traceback

from ..utilities.parent import end_orphan, watch_parent
from .launch import PAYLOAD_FILE, RESULT_FILE, report_path

PARENT_GONE_GRACE_S = 10.0
SHUTDOWN_GRACE_S = 60.0  # after the function: how long interpreter shutdown may take
CHAIN_LIMIT = 16  # links of a __cause__/__context__ chain that are sent back


def main(argv):
    workdir, rank, parent_pid = argv[0], int(argv[1]), int(argv[2])
    _watch_parent(parent_pid, workdir)
    # the parent's Ctrl-C arrives as SIGINT from the parent (this rank has a session of its
    # own); a shell that started the parent in the background left SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(os.path.join(workdir, PAYLOAD_FILE), 'rb') as file:
            payload = pickle.load(file)
        sys.path[:] = payload['sys_path'] + [p for p in sys.path if p not in payload['sys_path']]
        fn = pickle.loads(payload['function'])
        result = fn()
        if rank == 0:
            import cloudpickle
            _write_atomic(os.path.join(workdir, RESULT_FILE), cloudpickle.dumps(result))
    except SystemExit:
        raise  # sys.exit(code) in the function: the exit code tells the parent
    except BaseException as exc:
        failed_at = time.time()
        traceback.print_exc()  # first, so the log holds it before the parent reacts
        _flush()
        _write_atomic(report_path(workdir, rank), _report(exc, failed_at))
        _exit_within(SHUTDOWN_GRACE_S, 1)
        sys.exit(1)
    _flush()
    _exit_within(SHUTDOWN_GRACE_S, 0)


def _report(exc, failed_at):
    import cloudpickle
    chain, seen, current = [], set(), exc
    while current is not None and id(current) not in seen and len(chain) < CHAIN_LIMIT:
        seen.add(id(current))
        try:
            pickled = cloudpickle.dumps(current)
        except Exception:
            pickled = None  # the parent falls back to RankFailedError with the text
        following = current.__cause__
        link = 'cause'
        if following is None and not current.__suppress_context__:
            following, link = current.__context__, 'context'
        chain.append({'pickled': pickled, 'type': _type_name(current),
                      'message': _message(current), 'next': link})
        current = following
    return pickle.dumps({'chain': chain, 'failed_at': failed_at,
                         'traceback': ''.join(traceback.format_exception(
                             type(exc), exc, exc.__traceback__))})


def _type_name(exc):
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == 'builtins' else \
        f'{kind.__module__}.{kind.__qualname__}'


def _message(exc):
    try:
        return str(exc)
    except Exception as err:  # a broken __str__ must not hide the original error
        return f'<str() failed: {type(err).__name__}>'


def _write_atomic(path, data):
    temporary = f'{path}.{os.getpid()}.tmp'
    with open(temporary, 'wb') as file:
        file.write(data)
    os.replace(temporary, path)


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass  # closed or replaced by the function


def _exit_within(seconds, code):
    """Interpreter shutdown joins every non-daemon thread the function left running; if that
    takes longer than ``seconds``, end the process anyway (its result is written already)."""
    def force():
        time.sleep(seconds)
        sys.stderr.write(f'rank exit took over {seconds:.0f} s (a non-daemon thread still '
                         f'running?); ending the process with code {code}.\n')
        _flush()
        os._exit(code)
    threading.Thread(target=force, name='pl-exit-guard', daemon=True).start()


def _watch_parent(parent_pid, workdir):
    def gone():
        # nobody reads the files any more, and the dead parent cannot remove its folder
        shutil.rmtree(workdir, ignore_errors=True)
        end_orphan(PARENT_GONE_GRACE_S)
    if not watch_parent(parent_pid, gone):  # the parent died before this rank started
        gone()


if __name__ == '__main__':
    main(sys.argv[1:])

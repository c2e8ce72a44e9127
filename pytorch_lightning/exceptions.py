"""Errors the library raises on purpose."""


class MisconfigurationException(Exception):
    """A user error found before training: the message names the method or argument,
    what was received, and how to fix it."""


class NonFiniteLossError(FloatingPointError):
    """``training_step`` returned a NaN or infinite loss; the message names epoch and batch."""


class CheckpointError(Exception):
    """A checkpoint file cannot be used: unreadable, truncated, not ours, or for another
    model (its weights do not fit, or the model cannot be built with its hparams). The message
    names the file, the class that saved it where known, and what is wrong."""


class RankFailedError(RuntimeError):
    """A spawned rank failed and its own exception cannot be re-raised: it exited with a
    non-zero code (``os._exit``, a crash in native code), was killed by a signal, exited without
    handing back rank 0's result, or raised an exception that cannot be rebuilt in this process.

    ``rank`` is the failing rank, ``exitcode`` its exit code (negative: killed by that signal;
    ``None`` when unknown), ``child_traceback`` the traceback text it printed if it raised,
    else ``None``."""

    def __init__(self, message, rank=None, exitcode=None, child_traceback=None):
        super().__init__(message)
        self.rank = rank
        self.exitcode = exitcode
        self.child_traceback = child_traceback

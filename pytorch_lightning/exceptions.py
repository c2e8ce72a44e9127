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

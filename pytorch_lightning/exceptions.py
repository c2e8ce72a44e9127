"""Errors the library raises on purpose."""


class MisconfigurationException(Exception):
    """A user error found before training: the message names the method or argument,
    what was received, and how to fix it."""


class NonFiniteLossError(FloatingPointError):
    """``training_step`` returned a NaN or infinite loss; the message names epoch and batch."""


class CheckpointError(Exception):
    """A checkpoint file cannot be used: unreadable, truncated, not ours, or for another
    model. The message names the file and what is wrong."""

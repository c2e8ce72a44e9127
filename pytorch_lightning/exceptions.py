"""Errors the library raises on purpose."""


class MisconfigurationException(Exception):
    """A user error found before training: the message names the method or argument,
    what was received, and how to fix it."""


class NonFiniteLossError(FloatingPointError):
    """``training_step`` returned a NaN or infinite loss; the message names epoch and batch."""

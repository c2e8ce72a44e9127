"""Experiment loggers: the interface (``LightningLoggerBase``, ``rank_zero_only``) and the
test-tube logger, the default."""
from .base import LightningLoggerBase, rank_zero_only
from .test_tube import LoggerError, TestTubeLogger

__all__ = ['LightningLoggerBase', 'LoggerError', 'TestTubeLogger', 'rank_zero_only']

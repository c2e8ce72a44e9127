"""Experiment loggers (test-tube)."""
from .test_tube import LoggerError, TestTubeLogger

__all__ = ['LoggerError', 'TestTubeLogger']

"""Pluggable parts of the loop, built from the same hooks users get."""
from .base import CALLBACK_HOOKS, Callback
from .early_stopping import EarlyStopping
from .logging import MetricsLogging
from .model_checkpoint import ModelCheckpoint
from .progress import ProgressBar

__all__ = ['Callback', 'CALLBACK_HOOKS', 'EarlyStopping', 'MetricsLogging', 'ModelCheckpoint',
           'ProgressBar']

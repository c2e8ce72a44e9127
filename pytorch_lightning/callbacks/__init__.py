"""Pluggable parts of the loop, built from the same hooks users get."""
from .base import CALLBACK_HOOKS, Callback
from .logging import MetricsLogging
from .progress import ProgressBar

__all__ = ['Callback', 'CALLBACK_HOOKS', 'MetricsLogging', 'ProgressBar']

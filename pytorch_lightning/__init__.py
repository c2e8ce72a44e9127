"""pytorch_lightning: write the science in a ``RootModule``; ``Trainer(...).fit(model)`` runs it.

test-tube is imported lazily (only when logging starts), so this import stays cheap.
"""
from .exceptions import MisconfigurationException, NonFiniteLossError
from .module import RootModule, data_loader
from .state import TrainerState
from .trainer import Trainer
from .utilities._version import __version__

__all__ = ['RootModule', 'data_loader', 'Trainer', 'TrainerState', 'MisconfigurationException',
           'NonFiniteLossError', '__version__']

"""pytorch_lightning: write the science in a ``RootModule``; ``Trainer(...).fit(model)`` runs it.

test-tube is imported lazily (only when logging starts), so this import stays cheap.
"""
from .exceptions import MisconfigurationException, NonFiniteLossError
from .module import RootModule, data_loader

LightningModule = RootModule  # the classic 0.5.x name
from .state import TrainerState
from .trainer import Trainer
from .utilities._version import __version__

__all__ = ['RootModule', 'LightningModule', 'data_loader', 'Trainer', 'TrainerState', 'MisconfigurationException',
           'NonFiniteLossError', '__version__']

"""Device placement behind one interface (CPU here; GPU/DP/DDP/AMP plug in the same way)."""
from .base import Placement
from .cpu import CPUPlacement

__all__ = ['Placement', 'CPUPlacement']

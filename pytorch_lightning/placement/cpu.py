"""Running on the CPU: nothing to move."""
from .base import Placement


class CPUPlacement(Placement):
    name = 'cpu'

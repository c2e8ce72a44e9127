"""The world part: which process this is among how many. One process here; the distributed
placement fills in rank, world size, collectives and launching behind the same names."""


class SingleProcess:
    """A world of one: rank 0 of 1, every collective returns its input."""

    rank = 0
    world_size = 1
    is_zero = True

    def any(self, flag):
        """Whether ``flag`` is true on any rank (agreeing on stop/NaN decisions)."""
        return bool(flag)

    def __repr__(self):
        return 'SingleProcess()'

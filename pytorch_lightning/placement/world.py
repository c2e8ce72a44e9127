"""The world part: which process this is among how many, and the few collectives the loop
needs. ``SingleProcess`` is a world of one; ``ddp.DistributedWorld`` has the same names over
``torch.distributed``."""


class SingleProcess:
    """A world of one: rank 0 of 1; every collective returns what this process passed."""

    rank = local_rank = node_rank = 0
    world_size = 1
    is_zero = True

    def agree(self, *flags):
        """What any rank wants: this process's ``flags``, returned as they are (the loop asks
        after every batch, so nothing is built here)."""
        return flags

    def gather_objects(self, obj):
        """Every rank's ``obj`` in rank order: ``[obj]``."""
        return [obj]

    def broadcast_object(self, obj):
        """Rank 0's ``obj``: this one."""
        return obj

    def reduce_gradients(self, params):
        """Average gradients over the ranks: nothing to average with."""

    def __repr__(self):
        return 'SingleProcess()'

"""The world part: which process this is among how many, and the few collectives the loop
needs. ``SingleProcess`` is a world of one; ``ddp.DistributedWorld`` has the same names over
``torch.distributed``."""


class SingleProcess:
    """A world of one: rank 0 of 1; every collective returns what this process passed."""

    rank = local_rank = node_rank = 0
    world_size = 1
    is_zero = True

    def agree(self, *flags):
        """``flags`` as bools: what any rank wants, which is this process's wish here."""
        return tuple(bool(flag) for flag in flags)

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

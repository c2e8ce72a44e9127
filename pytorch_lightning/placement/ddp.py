"""Several processes on ``torch.distributed``: the world part (``DistributedWorld``: rank, world
size, the few collectives the loop needs) and the device part (``DistributedDevice``: training
steps through ``DistributedDataParallel``). The only module that imports ``torch.distributed``.

torch's process groups do all the communication: gloo between CPU processes, NCCL between
GPUs. Launching (torchrun, ``srun``, or ``fit`` starting the processes itself) is
``launch.py``'s job; this file starts from a process that knows its rank.
"""
import atexit
import datetime
import gc
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..exceptions import MisconfigurationException
from .device import CPUDevice, CUDADevice


class DistributedWorld:
    """This process's place in a ``torch.distributed`` world, and its collectives.

    ``env`` is a ``launch.ClusterEnvironment`` (rank, local rank, world size, node rank,
    master address and port). ``join`` creates the process group (or joins the one the user
    created). Every collective below must be called by every rank at the same point of the
    loop; each waits at most ``timeout_s`` (the process group's timeout) and then raises.
    """

    def __init__(self, env, backend, timeout_s):
        self.env = env
        self.rank, self.local_rank = env.rank, env.local_rank
        self.world_size, self.node_rank = env.world_size, env.node_rank
        self.is_zero = env.rank == 0
        self.backend = backend
        self.timeout_s = timeout_s
        self._flags_device = torch.device('cpu')

    def join(self, device):
        """Create the process group (``tcp://`` rendezvous at the master address and port), or
        check the one that already exists; ``device`` is where NCCL reduces flags."""
        if dist.is_initialized():
            if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.world_size):
                raise MisconfigurationException(
                    f"a torch.distributed process group already exists with rank "
                    f"{dist.get_rank()} of {dist.get_world_size()}, but the environment "
                    f"({self.env.source}) says rank {self.rank} of {self.world_size}. Call "
                    f"torch.distributed.destroy_process_group() first, or let fit create it.")
            self.backend = dist.get_backend()
        else:
            dist.init_process_group(
                self.backend, init_method=f'tcp://{self.env.master_addr}:{self.env.master_port}',
                rank=self.rank, world_size=self.world_size,
                timeout=datetime.timedelta(seconds=self.timeout_s))
            atexit.register(_destroy_group)
        if self.backend == 'nccl':
            self._flags_device = device.root

    def agree(self, *flags):
        """``flags`` (bools, or 0-dim tensors read as bools) made true on every rank where any
        rank has them true: one all-reduce, one host read. Returns a tuple of bools."""
        # a bool becomes a tensor made on the flags' device (torch.full): torch.tensor(x,
        # device=cuda) would copy it from the host with a blocking copy, a host sync per flag
        values = torch.stack([f.detach().reshape(()).to(self._flags_device, torch.float32)
                              if isinstance(f, torch.Tensor)
                              else torch.full((), float(bool(f)), device=self._flags_device)
                              for f in flags])
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in values.tolist())

    def gather_objects(self, obj):
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (the others pass anything, e.g. ``None``)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self):
        """Wait for every rank, then destroy the process group (when this world created it):
        the end of a process that was started for one fit."""
        if dist.is_initialized():
            dist.barrier()
            _destroy_group()

    def reduce_gradients(self, params):
        """Average the ``.grad`` of ``params`` over the ranks (a window DDP did not sync)."""
        grads = [p.grad for p in params if p.grad is not None]
        for grad in grads:
            dist.all_reduce(grad)
            grad.div_(self.world_size)

    def __repr__(self):
        return (f'DistributedWorld(rank={self.rank}, world_size={self.world_size}, '
                f'backend={self.backend!r}, {self.env.source})')


def _destroy_group():
    if dist.is_initialized():
        # a DDP wrapper still alive (in a reference cycle) when the group goes makes the
        # process abort at exit ("terminate called without an active exception")
        gc.collect()
        dist.destroy_process_group()


class _StepCaller(torch.nn.Module):
    """What DDP wraps: its ``forward(name, batch, *args)`` calls ``module.<name>(batch,
    *args)``, so ``training_step`` runs inside DDP's forward (which prepares the gradient
    all-reduce). Holds the user's module, which stays the user's module."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, name, batch, *args):
        return getattr(self.module, name)(batch, *args)


class DistributedDevice:
    """The device part of DDP: one process per GPU (``gpu_ids``: the ids on each node; the
    process of local rank ``r`` uses ``gpu_ids[r]``) or per CPU process (``gpu_ids=None``).

    Before ``join`` (in the process that launches the others, and for ``test()`` there) it
    acts as its first device alone. After ``join``, ``training_step`` runs through
    ``DistributedDataParallel`` (built by ``prepare``), and ``validation_step``/``test_step``
    through the user's module itself: ranks may hold unequal evaluation shards, and a DDP
    forward can start a collective (the buffer broadcast) that a rank with fewer batches
    would never join.

    ``find_unused_parameters``: ``None`` sets it when there are several optimizers (the
    trainer freezes the other optimizers' parameters for each loss, so they get no gradient).
    """

    def __init__(self, gpu_ids=None, find_unused_parameters=None):
        self.node_gpu_ids = list(gpu_ids) if gpu_ids else None
        self.find_unused_parameters = find_unused_parameters
        self._base = CUDADevice(gpu_ids[0]) if gpu_ids else CPUDevice()
        self._joined = False
        self._ddp = None

    @property
    def processes_per_node(self):
        return len(self.node_gpu_ids) if self.node_gpu_ids else None

    @property
    def root(self):
        return self._base.root

    @property
    def gpu_ids(self):
        return self._base.gpu_ids

    @property
    def transfers_batches(self):
        return self._base.transfers_batches

    @property
    def cheap_item(self):
        # a NaN loss on one rank must end every rank together: checked at agreed points
        return self._base.cheap_item and not self._joined

    def join(self, local_rank):
        """This process is local rank ``local_rank``: take its GPU."""
        if self.node_gpu_ids:
            self._base = CUDADevice(self.node_gpu_ids[local_rank])
            torch.cuda.set_device(self._base.root)  # before NCCL starts on it
        self._joined = True

    def setup(self, module):
        self._base.setup(module)
        self._ddp = None

    def prepare(self, module, nb_optimizers):
        """After ``configure_optimizers``, before any parameter is frozen: wrap ``module`` in
        DDP (which registers the parameters that require gradients, and broadcasts rank 0's
        parameters and buffers)."""
        self._ddp = None
        if not self._joined:
            return
        find_unused = self.find_unused_parameters
        if find_unused is None:  # the other optimizers' parameters are frozen for each loss
            find_unused = nb_optimizers > 1
        self._ddp = DistributedDataParallel(_StepCaller(module), device_ids=self._base.gpu_ids,
                                            find_unused_parameters=find_unused)

    def to_device(self, module, batch):
        return self._base.to_device(module, batch)

    def run_step(self, module, name, batch, args, context):
        if not self._joined or name != 'training_step':
            return self._base.run_step(module, name, batch, args, context)
        with context():
            return self._ddp(name, batch, *args)

    def no_sync(self):
        """Around the backward passes of a window's batches that are not its last: the
        gradients are summed locally and all-reduced once, with the last batch's backward."""
        return self._ddp.no_sync() if self._ddp is not None else nullcontext()

    def teardown(self, module):
        self._ddp = None

    def __repr__(self):
        return f'DistributedDevice({self._base!r})'

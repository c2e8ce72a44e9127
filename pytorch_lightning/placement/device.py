"""The device part: where the module and the batches live, and how a step method is called
(directly, or on DataParallel replicas). The user's module is never replaced: a wrapper, when
there is one, is held here."""
from contextlib import nullcontext

import torch

from ..exceptions import MisconfigurationException
from .data_parallel import DataParallelRunner


class CPUDevice:
    """Runs on the CPU: nothing moves.

    ``transfers_batches``: whether batches must go through ``to_device`` (False lets the loop
    skip it). ``cheap_item``: whether reading a scalar costs no device sync, so the loop may
    check every loss for NaN/inf at once; otherwise a flag on the device is read at a fixed
    batch cadence (see ``Trainer``). Tests flip either to run the accelerator code paths on
    the CPU.
    """

    transfers_batches = False
    cheap_item = True
    gpu_ids = None

    def __init__(self):
        self.root = torch.device('cpu')

    def setup(self, module):
        """Move ``module`` to the device (before its optimizers are built)."""
        module.to(self.root)

    def prepare(self, module, nb_optimizers):
        """After ``configure_optimizers``: build what wraps ``module`` for training (nothing
        here; DDP's wrapper in ``DistributedDevice``)."""

    def no_sync(self):
        """A context around backward passes whose gradients are only summed locally (the
        batches of an accumulation window before its last); nothing to do in one process."""
        return nullcontext()

    def to_device(self, module, batch):
        """``batch`` on the device: the module's ``transfer_batch_to_device`` hook decides.
        Raises ``MisconfigurationException`` when the hook returns ``None`` for a batch."""
        moved = module.transfer_batch_to_device(batch, self.root)
        if moved is None and batch is not None:  # an override that moved in place
            raise MisconfigurationException(
                f"{type(module).__name__}.transfer_batch_to_device returned None for a batch "
                f"of type {type(batch).__name__}. Return the batch on the device "
                f"(return batch, or the moved copy).")
        return moved

    def run_step(self, module, name, batch, args, context):
        """``module.<name>(batch, *args)`` inside ``context()`` (the precision's autocast)."""
        with context():
            return getattr(module, name)(batch, *args)

    def teardown(self, module):
        """After fit: drop what ``setup`` built besides the module (nothing here)."""

    def __repr__(self):
        return f'{type(self).__name__}({self.root})'


class CUDADevice(CPUDevice):
    """One GPU: the module and each batch on ``cuda:<id>``; scalars stay on the device."""

    transfers_batches = True
    cheap_item = False

    def __init__(self, gpu_id):
        self.gpu_ids = [gpu_id]
        self.root = torch.device('cuda', gpu_id)

    def setup(self, module):
        torch.cuda.set_device(self.root)
        module.to(self.root)


class DataParallelDevice(CUDADevice):
    """Several GPUs in one process: every step method runs on replicas of the module, one per
    GPU, each on its slice of the batch; the outputs are reduced by the rule in
    ``data_parallel.reduce_replica_outputs`` (see docs/devices.md)."""

    def __init__(self, gpu_ids):
        super().__init__(gpu_ids[0])
        self.gpu_ids = list(gpu_ids)
        self._runner = None

    def run_step(self, module, name, batch, args, context):
        if self._runner is None or self._runner.module is not module:  # also test() after fit
            self._runner = DataParallelRunner(module, self.gpu_ids)
        # autocast is thread-local and replicas run in threads: entered inside each
        return self._runner.run(name, batch, *args, context=context)

    def teardown(self, module):
        self._runner = None

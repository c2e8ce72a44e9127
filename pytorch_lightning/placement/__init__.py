"""Where and how the model runs, as three small parts the Trainer combines: a *device* part
(module and batches, a DataParallel wrapper), a *precision* part (autocast, loss scaling) and
a *world* part (rank, world size, collectives). The loop calls them and never branches on the
device. ``ddp.py`` holds the DDP device and world parts, ``launch.py`` starts the processes."""
import torch

from ..exceptions import MisconfigurationException
from .device import CPUDevice, CUDADevice, DataParallelDevice
from .gpus import parse_gpus, root_gpu
from .precision import FullPrecision, MixedPrecision
from .world import SingleProcess

__all__ = ['CPUDevice', 'CUDADevice', 'DataParallelDevice', 'FullPrecision', 'MixedPrecision',
           'SingleProcess', 'make_device', 'make_precision', 'parse_gpus', 'root_gpu']

BACKENDS = (None, 'dp', 'ddp', 'ddp_spawn')
AMP_DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16}


def make_device(gpus, distributed_backend=None, device_count=None,
                find_unused_parameters=None):
    """The device part for ``Trainer(gpus=..., distributed_backend=...)``: ``'ddp'`` (or its
    classic spelling ``'ddp_spawn'``) gives a ``DistributedDevice`` (one process per GPU, or
    CPU processes without GPUs); otherwise one process on the CPU, one GPU, or DataParallel."""
    if distributed_backend not in BACKENDS:
        hint = (" ('ddp2', one process per node with DataParallel inside, is not built: use "
                "'ddp')") if distributed_backend == 'ddp2' else ''
        raise MisconfigurationException(
            f"Trainer(distributed_backend={distributed_backend!r}) is not supported{hint}. "
            f"Use None (one GPU, or DataParallel over several), 'dp', or 'ddp' (one process "
            f"per GPU, or num_processes CPU processes).")
    ids = parse_gpus(gpus, device_count)
    if distributed_backend in ('ddp', 'ddp_spawn'):
        from .ddp import DistributedDevice
        return DistributedDevice(ids, find_unused_parameters)
    if find_unused_parameters is not None:
        raise MisconfigurationException(
            f"Trainer(find_unused_parameters={find_unused_parameters!r}) is an option of "
            f"DistributedDataParallel: pass distributed_backend='ddp', or drop it.")
    if ids is None:
        return CPUDevice()
    if len(ids) == 1:
        return CUDADevice(ids[0])
    return DataParallelDevice(ids)


def make_precision(use_amp, amp_dtype, amp_level, device_type):
    """The precision part for ``Trainer(use_amp=..., amp_dtype=..., amp_level=...)``."""
    if amp_level is not None:
        raise MisconfigurationException(
            f"Trainer(amp_level={amp_level!r}) is NVIDIA apex's optimisation level; this "
            f"library uses torch's native mixed precision (torch.autocast and GradScaler), "
            f"which has no levels. Remove amp_level and pass use_amp=True (float16 with a loss "
            f"scaler on a GPU, bfloat16 on the CPU) and amp_dtype='bfloat16' or 'float16' to "
            f"choose.")
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise MisconfigurationException(
            f"Trainer(amp_dtype={amp_dtype!r}): use 'bfloat16' or 'float16' (with use_amp=True).")
    if not use_amp:
        if amp_dtype is not None:
            raise MisconfigurationException(
                f"Trainer(amp_dtype={amp_dtype!r}) has no effect without use_amp=True. Pass "
                f"use_amp=True, or drop amp_dtype.")
        return FullPrecision()
    if amp_dtype is None:
        amp_dtype = 'float16' if device_type == 'cuda' else 'bfloat16'
    return MixedPrecision(device_type, AMP_DTYPES[amp_dtype])

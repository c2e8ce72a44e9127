"""Small helpers with no dependencies on the rest of the package."""
import inspect
import numbers
import os
import struct
from collections.abc import Mapping

import torch


def is_overridden(obj, name, base):
    """True when ``obj``'s class defines ``name`` differently from ``base``, or ``obj`` holds
    a callable ``name`` of its own (assigned on the instance: ``model.on_epoch_start = fn``)."""
    if callable(getattr(obj, '__dict__', {}).get(name)):
        return True
    own = getattr(type(obj), name, None)
    return own is not None and own is not getattr(base, name, None)


def assigned_on_instance(obj, name):
    """Whether ``obj.name`` is an attribute of the instance itself, not a method of its class
    (such a function takes no ``self``)."""
    return name in getattr(obj, '__dict__', {})


def positional_arity(fn):
    """``(required, total)`` positional parameters a bound callable takes; ``total`` is
    ``None`` when it takes ``*args``."""
    required = total = 0
    for param in inspect.signature(fn).parameters.values():
        if param.kind == param.VAR_POSITIONAL:
            return required, None
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            total += 1
            required += param.default is param.empty
    return required, total


def accepts(fn, count):
    """Whether ``fn`` can be called with ``count`` positional arguments."""
    required, total = positional_arity(fn)
    return required <= count and (total is None or total >= count)


def to_number(value):
    """A tensor or number as a Python number; other values unchanged. Metrics cross from
    the device to the host here, when the progress bar redraws or a log row is written."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().tolist()
    if hasattr(value, 'item') and getattr(value, 'size', 2) == 1:  # numpy scalars
        return value.item()
    return value


def parse_cell(text):
    """A CSV cell (``metrics.csv``) back as the int, float or string it was written from."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def numbers_only(metrics):
    """``metrics`` with tensors turned into numbers, dropping values that are not scalars.
    The scalar tensors of each device are read in one transfer (one host sync, not one per
    value); tensors that are dropped (several values, bools) are never read."""
    return NumbersRead(metrics, wait=True).numbers()


class NumbersRead:
    """``numbers_only(metrics)``, read without making the host wait for the device: the copies
    to the host start when this is created (one per device, into pinned memory, followed by a
    CUDA event), ``ready()`` says whether they have arrived (no sync), ``numbers()`` returns
    the dict (waiting for the copies if they have not arrived: a host sync then). The values
    are those ``metrics`` held at creation; integer tensors come back as exact ints.
    ``wait=True`` reads at once, as ``numbers_only``.
    Off CUDA the values are read when ``numbers()`` is called."""

    def __init__(self, metrics, wait=False):
        self._out, by_device = {}, {}
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                if value.numel() == 1 and value.dtype != torch.bool:
                    by_device.setdefault(value.device, []).append((key, value))
                    self._out[key] = None  # keeps the order of the keys
                continue  # not a number (several values, or a bool): dropped without a read
            value = to_number(value)
            if isinstance(value, numbers.Number) and not isinstance(value, bool):
                self._out[key] = value
        self._copies = []  # (pairs, values, event)
        for device, pairs in by_device.items():
            values = torch.stack([_as_int64_bits(v) for _, v in pairs])
            event = None
            if device.type == 'cuda' and not wait:
                host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
                host.copy_(values, non_blocking=True)
                with torch.cuda.device(device):
                    event = torch.cuda.Event()
                    event.record()
                values = host
            self._copies.append((pairs, values, event))

    def ready(self):
        """Whether ``numbers()`` can return without waiting for a device."""
        return all(event is None or event.query() for _, _, event in self._copies)

    def numbers(self):
        out = dict(self._out)
        for pairs, values, event in self._copies:
            if event is not None:
                event.synchronize()
            for (key, tensor), bits in zip(pairs, values.tolist()):  # floats decoded here
                out[key] = _float_from_bits(bits) if tensor.is_floating_point() else bits
        return {key: value for key, value in out.items() if value is not None}


def _as_int64_bits(value):
    """A one-element tensor as a 0-dim int64, so the values of one device stack into one
    copy: an integer as it is, a float as the 64 bits of its float64 (converting an int64
    beyond 2**53 to a float64 would round it)."""
    value = value.detach().reshape(())
    return value.double().view(torch.int64) if value.is_floating_point() else value.long()


def _float_from_bits(bits):
    return struct.unpack('=d', struct.pack('=q', bits))[0]


def batch_size_of(batch):
    """The number of samples in ``batch``: the length of dim 0 of the first tensor found in it
    (searching tuples, lists and the values of dicts and other mappings in order); ``None``
    when it holds no tensor with a dim 0."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else None
    if isinstance(batch, Mapping):  # a UserDict (a tokenizer's output) too
        batch = batch.values()
    elif not isinstance(batch, (tuple, list)):
        return None
    for item in batch:
        size = batch_size_of(item)
        if size is not None:
            return size
    return None


class StepOutputs(list):
    """What the trainer hands to ``validation_end``/``test_end``: the list of step outputs, in
    order, with ``batch_sizes``: the number of samples in each step's batch (``batch_size_of``,
    1 when the batch holds no tensor). A plain list in every other respect."""

    def __init__(self, outputs=(), batch_sizes=()):
        super().__init__(outputs)
        self.batch_sizes = list(batch_sizes)


def durable_replace(tmp, path):
    """Put the complete file ``tmp`` under ``path`` durably: fsync it, rename it over
    ``path`` (atomic: a crash leaves the old file or the new one), then fsync the folder so
    the rename itself survives a crash. ``tmp`` must be in ``path``'s folder. Every
    checkpoint write ends here, including ``ModelCheckpoint``'s copied best file."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or '.', os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def pid_alive(pid):
    """Whether process ``pid`` exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True

"""DataParallel for step methods: run ``training_step`` (or another step) on replicas of the
user's module, one per GPU, each on a slice of the batch, and reduce what they return.

The reduction rule (``reduce_replica_outputs``), value by value:

- a 0-dim tensor (the loss, a metric): the mean over replicas weighted by each replica's slice
  size, so a loss that is a mean over its slice becomes the mean over the whole batch and its
  gradient equals that of one device running the whole batch;
- a tensor with dimensions: the replicas' tensors concatenated along dim 0 (only dim 0 may
  differ between them);
- a Python int or float (not a bool): the weighted mean, as a float;
- a dict, list or tuple: reduced key by key / item by item with these rules, keeping its type;
- anything else (a string, ``None``, a bool): replica 0's value.

One exception, for ``training_step`` only: its loss (the output itself when it is a tensor,
the first item of a tuple or list, or the ``'loss'`` key of a dict) may have shape ``(1,)``
(the loss contract allows it; ``loss.unsqueeze(0)`` is the classic DataParallel idiom); each
replica's such loss is taken as 0-dim first, so it is averaged like one, not concatenated
into shape ``(replicas,)``.
"""
import threading
from collections.abc import Mapping
from contextlib import nullcontext
from numbers import Number

import torch
from torch.nn.parallel import replicate, scatter

from ..utilities.transfer import rebuild_mapping, rebuild_sequence


def reduce_replica_outputs(outputs, sizes, output_device=None):
    """Reduce the step outputs of several replicas into one output, by the rule above.

    ``outputs``: one step output per replica, all with the same structure. ``sizes``: the
    number of samples each replica's slice held. Tensors end on ``output_device``, or, when it
    is ``None``, on the device of replica 0's tensor at the same place. Gradients flow back
    through the result to every replica's tensors.
    """
    if len(outputs) != len(sizes) or not outputs:
        raise ValueError(f'{len(outputs)} replica outputs for {len(sizes)} slice sizes')
    total = sum(sizes)
    weights = [size / total for size in sizes]
    return _reduce(list(outputs), weights, output_device, 'the output')


def _reduce(values, weights, device, where):
    first = values[0]
    _check_same_kind(values, where)
    if isinstance(first, torch.Tensor):
        device = first.device if device is None else device
        if first.dim() == 0:
            return _weighted_mean(values, weights, device)
        if len({value.shape[1:] for value in values}) > 1:
            raise ValueError(f'replica outputs differ at {where}: tensors of shapes '
                             f'{[tuple(value.shape) for value in values]} cannot be '
                             f'concatenated along dim 0; only dim 0 (the samples) may differ '
                             f'between replicas (pad the other dims to a fixed length)')
        return torch.cat([value.to(device) for value in values])
    if isinstance(first, Mapping):
        keys = list(first)
        for i, value in enumerate(values[1:], 1):
            if list(value) != keys:
                raise ValueError(f'replica outputs differ at {where}: replica 0 returned the '
                                 f'keys {keys}, replica {i} {list(value)}; a step must return '
                                 f'the same structure on every replica')
        return rebuild_mapping(first, [
            (key, _reduce([value[key] for value in values], weights, device, f'{where}[{key!r}]'))
            for key in keys])
    if isinstance(first, (list, tuple)):
        if len({len(value) for value in values}) > 1:
            raise ValueError(f'replica outputs differ at {where}: lengths '
                             f'{[len(value) for value in values]}')
        return rebuild_sequence(first, [
            _reduce([value[i] for value in values], weights, device, f'{where}[{i}]')
            for i in range(len(first))])
    if isinstance(first, Number) and not isinstance(first, bool):
        return float(sum(value * weight for value, weight in zip(values, weights)))
    return first


def _weighted_mean(values, weights, device):
    """Weighted mean of 0-dim tensors, summed in at least float32 (a bfloat16 loss times a
    weight like 1/3 would round) and returned in the values' dtype when it is a float."""
    dtype = values[0].dtype
    compute = torch.promote_types(dtype, torch.float32)
    total = values[0].to(device=device, dtype=compute) * weights[0]
    for value, weight in zip(values[1:], weights[1:]):
        total = total + value.to(device=device, dtype=compute) * weight
    return total.to(dtype) if dtype.is_floating_point else total


def _check_same_kind(values, where):
    """Values that are reduced (not taken from replica 0) must be of one kind."""
    kinds = [_kind(value) for value in values]
    for i, kind in enumerate(kinds[1:], 1):
        if kind != kinds[0] and (kind or kinds[0]):
            raise ValueError(f'replica outputs differ at {where}: replica 0 returned '
                             f'{kinds[0] or type(values[0]).__name__}, replica {i} '
                             f'{kind or type(values[i]).__name__}; a step must return the '
                             f'same structure on every replica')


def _kind(value):
    """What decides how ``value`` is reduced; ``None`` for values taken from replica 0."""
    if isinstance(value, torch.Tensor):
        return 'a 0-dim tensor' if value.dim() == 0 else f'a {value.dim()}-dim tensor'
    if isinstance(value, Mapping):
        return 'a mapping'
    if isinstance(value, (list, tuple)):
        return 'a list or tuple'
    if isinstance(value, Number) and not isinstance(value, bool):
        return 'a number'
    return None


class DataParallelRunner:
    """Runs a step method of the user's module on one replica per GPU in ``device_ids``.

    ``module`` stays the user's module (``runner.module``); replicas are made for each call
    and dropped after it, so hooks, checkpoints and ``validation_end`` keep using ``module``.
    The module's parameters must be on ``cuda:device_ids[0]`` (the root); replicas share its
    attributes (``hparams``, ``trainer``...), since ``replicate`` copies them shallowly.
    """

    def __init__(self, module, device_ids):
        if not device_ids:
            raise ValueError('DataParallelRunner needs at least one device id')
        self.module = module
        self.device_ids = list(device_ids)
        self.output_device = torch.device('cuda', self.device_ids[0])

    def run(self, name, batch, *args, context=None):
        """Return what ``module.<name>(slice, *args)`` returns on each replica, reduced by
        ``reduce_replica_outputs`` (weighted by slice size, on the root device).

        ``batch`` is split along dim 0 over the devices (``torch.nn.parallel.scatter``:
        tensors inside lists, tuples, namedtuples and dicts are sliced; other objects are
        handed whole to every replica); a batch of fewer samples than devices uses fewer
        replicas. ``args`` go unchanged to every replica. ``context``, when given, is a
        callable returning a context manager (e.g. the precision part's autocast): it is
        entered inside each replica's thread, because autocast and grad mode are
        thread-local; entering it around ``run`` would not reach the replicas. With one
        device (or one slice) the module itself is called in this thread, inside ``context``,
        on the batch as it is (move it to the root device first).
        """
        enter = context or nullcontext
        slices = scatter(batch, self.device_ids) if len(self.device_ids) > 1 else [batch]
        if len(slices) == 1:
            with enter():
                return getattr(self.module, name)(slices[0], *args)
        devices = self.device_ids[:len(slices)]
        replicas = replicate(self.module, devices, detach=not torch.is_grad_enabled())
        calls = [(getattr(replica, name), (piece,) + args)
                 for replica, piece in zip(replicas, slices)]
        outputs = _apply_in_threads(calls, devices, enter)
        if name == 'training_step':
            outputs = [_loss_as_scalar(output) for output in outputs]
        sizes = [_slice_size(piece) for piece in slices]
        if None in sizes:  # no tensor to count samples in: every replica weighs the same
            sizes = [1] * len(slices)
        return reduce_replica_outputs(outputs, sizes, self.output_device)


def _loss_as_scalar(output):
    """``training_step``'s output with its loss reshaped to 0-dim when it has shape ``(1,)``
    (see the module docstring); anything else is returned unchanged."""
    def scalar(loss):
        one = isinstance(loss, torch.Tensor) and loss.shape == (1,)
        return loss.reshape(()) if one else loss

    if isinstance(output, torch.Tensor):
        return scalar(output)
    if isinstance(output, (list, tuple)) and output:
        return rebuild_sequence(output, [scalar(output[0]), *output[1:]])
    if isinstance(output, Mapping) and 'loss' in output:
        return rebuild_mapping(output, [(key, scalar(value) if key == 'loss' else value)
                                        for key, value in output.items()])
    return output


def _apply_in_threads(calls, devices, enter):
    """Run ``fn(*args)`` for each of ``calls`` in its own thread on its device, inside
    ``enter()``, with the caller's grad mode and current CUDA streams; re-raise the first
    error in the caller's thread."""
    grad_enabled = torch.is_grad_enabled()
    streams = [torch.cuda.current_stream(device) for device in devices]
    results, errors = [None] * len(calls), [None] * len(calls)

    def work(i):
        fn, args = calls[i]
        torch.set_grad_enabled(grad_enabled)
        try:
            with torch.cuda.device(devices[i]), torch.cuda.stream(streams[i]), enter():
                results[i] = fn(*args)
        except BaseException as error:  # raised again below, in the caller's thread
            errors[i] = error

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    return results


def _slice_size(piece):
    """Samples in a slice: dim 0 of its first tensor with dimensions, else ``None``."""
    if isinstance(piece, torch.Tensor):
        return piece.shape[0] if piece.dim() else None
    items = piece.values() if isinstance(piece, Mapping) else (
        piece if isinstance(piece, (list, tuple)) else ())
    for item in items:
        size = _slice_size(item)
        if size is not None:
            return size
    return None

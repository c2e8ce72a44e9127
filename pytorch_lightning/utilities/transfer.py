"""Moving a batch to a device: the default behind the ``transfer_batch_to_device`` hook."""
import inspect
from collections import defaultdict
from collections.abc import Mapping

import torch


def move_to_device(batch, device, non_blocking=False):
    """Return ``batch`` with every tensor in it on ``device``.

    An object with a ``.to()`` method, even a tuple or a mapping (a ``PackedSequence``), is
    moved with ``obj.to(device)``, plus ``non_blocking`` when its ``.to`` accepts that
    keyword; a ``.to()`` that moves in place and returns ``None`` leaves the object itself in
    the result. Otherwise walks lists, tuples, namedtuples (rebuilt as the same namedtuple
    type) and mappings (rebuilt as the same type when it can be built from ``(key, value)``
    pairs, so an ``OrderedDict`` stays one; a ``defaultdict`` keeps its factory; other
    mappings become a ``dict``). Everything else (numbers, strings, ``None``, classes, even
    a class with a ``to`` method) is returned as it is. A tensor that appears several times
    in ``batch`` is moved once: every place holds the same copy, so structures that shared a
    tensor still share it on ``device``.

    ``non_blocking=True`` applies to copies to CUDA only. A blocking copy from host memory
    waits until the GPU has finished the work queued before it (a host sync per tensor); a
    non-blocking one returns once pageable memory is staged (the driver may still wait while
    staging; torch adds no sync), and from pinned memory
    (``DataLoader(pin_memory=True)``) runs in the background. Copies to the CPU stay blocking.
    """
    device = torch.device(device)
    return _move(batch, device, non_blocking and device.type == 'cuda', {})


def _move(obj, device, non_blocking, moved_tensors):
    """``moved_tensors``: id of each tensor moved so far in this call -> its copy, so a
    tensor found twice is copied once and both places share the copy (as they shared the
    original); the batch holds every original alive meanwhile, so ids are not reused."""
    if isinstance(obj, torch.Tensor):
        copy = moved_tensors.get(id(obj))
        if copy is None:
            copy = moved_tensors[id(obj)] = obj.to(device, non_blocking=non_blocking)
        return copy
    if isinstance(obj, type):  # a class: its .to, if any, is an unbound function
        return obj
    # before the containers: a tuple or mapping with its own .to() knows what must not move
    # (a PackedSequence keeps its batch_sizes on the CPU)
    to = getattr(obj, 'to', None)
    if callable(to):
        moved = to(device, non_blocking=non_blocking) if _takes_non_blocking(to) else to(device)
        return obj if moved is None else moved
    if isinstance(obj, (list, tuple)):
        return rebuild_sequence(obj, [_move(item, device, non_blocking, moved_tensors)
                                      for item in obj])
    if isinstance(obj, Mapping):
        return rebuild_mapping(obj, [(k, _move(v, device, non_blocking, moved_tensors))
                                     for k, v in obj.items()])
    return obj


def rebuild_sequence(template, items):
    """A list or tuple of ``template``'s type holding ``items`` (namedtuples by field)."""
    if hasattr(template, '_fields'):  # a namedtuple: its constructor takes one argument a field
        return type(template)(*items)
    return type(template)(items)


def rebuild_mapping(template, pairs):
    """A mapping like ``template`` holding ``pairs``: its own type when that type can be built
    from pairs (``dict``, ``OrderedDict``, most subclasses), a ``defaultdict`` with the same
    factory, else a plain ``dict`` (also when the type reads pairs otherwise: a ``Counter``
    counts them)."""
    if isinstance(template, defaultdict):
        return defaultdict(template.default_factory, pairs)
    try:
        rebuilt = type(template)(pairs)
    except TypeError:  # e.g. a read-only mapping view, or a constructor with other arguments
        return dict(pairs)
    return rebuilt if list(rebuilt) == [key for key, _ in pairs] else dict(pairs)


def _takes_non_blocking(method):
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: do not guess
        return False
    return any(p.name == 'non_blocking' or p.kind is p.VAR_KEYWORD for p in parameters)

"""The ``gpus`` argument in its classic forms, turned into a list of CUDA device ids.

========================  =============================================
``gpus``                  devices
========================  =============================================
``None``, ``0``, ``"0"``  the CPU (``parse_gpus`` returns ``None``)
``N`` or ``"N"`` (N > 0)  the first N GPUs: ``[0, ..., N - 1]``
``-1`` or ``"-1"``        every GPU this process sees
``[2, 0]``, ``(1,)``      exactly these ids, in this order
``"0,1"``, ``"0, 1"``     a list of ids; ``"3,"`` is GPU 3 alone
``[]``                    the CPU
========================  =============================================
"""
import numbers
import re

import torch

from ..exceptions import MisconfigurationException

_FORMS = ('None or 0 for the CPU, a count N for the first N GPUs, -1 for all of them, a list '
          'of ids like [0, 1], or a string like "0,1" (ids) or "2" (a count)')


def parse_gpus(gpus, device_count=None):
    """Return the CUDA device ids that ``gpus`` asks for, or ``None`` for the CPU.

    ``device_count`` is how many GPUs exist; ``None`` asks torch (0 when
    ``torch.cuda.is_available()`` is False). Tests pass a number to check the ids as if
    that many GPUs existed. Raises ``MisconfigurationException`` when the form is not one of
    the above, a count is negative (other than -1), an id repeats, GPUs are asked for without
    CUDA, or an id or count goes beyond the GPUs that exist.
    """
    ids = _requested_ids(gpus)
    if ids is None or ids == []:
        return None
    count = _count() if device_count is None else device_count
    if count == 0:
        raise MisconfigurationException(
            f'Trainer(gpus={gpus!r}) asks for GPUs, but CUDA is not available '
            f'(torch.cuda.is_available() is False with torch {torch.__version__}: no GPU, no '
            f'driver, a CPU-only build of torch, or CUDA_VISIBLE_DEVICES hides every GPU). '
            f'Pass gpus=None to train on the CPU.')
    if ids == 'all':
        return list(range(count))
    missing = ids[count:] if isinstance(ids, range) else [i for i in ids if i >= count]
    if missing:
        raise MisconfigurationException(
            f'Trainer(gpus={gpus!r}) needs GPU {_join(missing)}, which this process does not '
            f'have: it sees {count} GPU{"s" if count > 1 else ""} (ids {_join(range(count))}). '
            f'Pass ids from that list, a count of at most {count}, or gpus=-1 for all of them '
            f'(CUDA_VISIBLE_DEVICES renumbers the GPUs it leaves visible from 0).')
    return list(ids)


def root_gpu(ids):
    """The root device id (the first of ``ids``), or ``None`` when ``ids`` is empty or None."""
    return ids[0] if ids else None


def _requested_ids(gpus):
    """``gpus`` as a list of ids, ``'all'``, or ``None`` (CPU), before looking at the devices."""
    if gpus is None:
        return None
    if isinstance(gpus, str):
        return _ids_from_string(gpus)
    if _is_int(gpus):
        return _ids_from_count(int(gpus), gpus)
    if isinstance(gpus, (list, tuple)):
        return _checked_ids(gpus, gpus)
    _bad(gpus, f'a {type(gpus).__name__} is not one of the forms')


def _checked_ids(ids, gpus):
    for i in ids:
        if not _is_int(i) or i < 0:
            _bad(gpus, f'{i!r} is not a device id (ids are integers >= 0)')
    ids = [int(i) for i in ids]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        _bad(gpus, f'GPU {_join(repeated)} is listed more than once')
    return ids


def _ids_from_string(text):
    parts = [part.strip() for part in text.split(',')]
    if len(parts) > 1:  # a list of ids
        if parts[-1] == '':  # one trailing comma ("3,") makes a list of one id
            parts = parts[:-1]
        # any other empty part is an error: "0,,1" may be a script's "$A,$B,$C" with B unset
        if not all(re.fullmatch('[0-9]+', part) for part in parts):
            _bad(text, 'a string with commas must list device ids (integers >= 0, no empty '
                       'ones)')
        return _checked_ids([int(part) for part in parts], text)
    if not re.fullmatch('-?[0-9]+', parts[0]):
        _bad(text, 'a string without commas must be one integer (a count)')
    return _ids_from_count(int(parts[0]), text)


def _ids_from_count(count, gpus):
    if count == -1:
        return 'all'
    if count < 0:
        _bad(gpus, 'a count must be >= 0, or -1 for all GPUs')
    return range(count) or None  # a range: a huge count (a job id by mistake) is never listed


def _bad(gpus, why):
    raise MisconfigurationException(f'Trainer(gpus={gpus!r}): {why}. Pass {_FORMS}.')


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _count():
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _join(ids):
    """A list or range of ids, ', '-separated; beyond 9, the first 8, '...' and the last."""
    if not ids[9:]:
        return ', '.join(str(i) for i in ids)
    return ', '.join([str(i) for i in ids[:8]] + ['...', str(ids[-1])])

"""Building optimizers by name and normalising what ``configure_optimizers`` returns."""
import torch

from .exceptions import MisconfigurationException

OPTIMIZERS = {
    'adam': torch.optim.Adam,
    'adamw': torch.optim.AdamW,
    'sgd': torch.optim.SGD,
    'rmsprop': torch.optim.RMSprop,
    'adadelta': torch.optim.Adadelta,
    'sparse_adam': torch.optim.SparseAdam,
}

_FORMS = ('one optimizer, a list/tuple of optimizers, a pair ([optimizers], [lr_schedulers]), '
          "or a dict {'optimizer': opt, 'lr_scheduler': sched or {...}, 'frequency': n} (or a "
          'list of such dicts)')
_OPTIMIZER_KEYS = ('optimizer', 'lr_scheduler', 'frequency')
_SCHEDULER_KEYS = ('scheduler', 'interval', 'frequency', 'monitor')


def choose_optimizer(name, params, kwargs=None, key='optimizer'):
    """Build the optimizer called ``name`` (case-insensitive) over ``params``."""
    cls = OPTIMIZERS.get(str(name).lower())
    if cls is None:
        raise MisconfigurationException(
            f"choose_optimizer: unknown {key} name {name!r}. "
            f"Known names: {', '.join(sorted(OPTIMIZERS))}.")
    return cls(params, **(kwargs or {}))


def _is_scheduler(obj):
    return hasattr(obj, 'step') and hasattr(obj, 'optimizer') and not isinstance(obj, torch.optim.Optimizer)


class Optimizers:
    """What ``configure_optimizers`` returned, normalised: ``optimizers``; ``schedulers``, one
    dict per LR scheduler (``scheduler``, ``interval`` 'epoch' or 'step', ``frequency``,
    ``monitor``, ``optimizer_i``: the optimizer it follows); ``frequencies`` (how many
    consecutive training batches each optimizer takes in turn) or ``None`` (every optimizer on
    every batch)."""

    def __init__(self, optimizers, schedulers, frequencies):
        self.optimizers, self.schedulers, self.frequencies = optimizers, schedulers, frequencies


def _fail(message):
    raise MisconfigurationException(f"configure_optimizers: {message}")


def _scheduler_config(entry, optimizer_i, optimizer):
    config = {'scheduler': entry, 'interval': 'epoch', 'frequency': 1, 'monitor': 'val_loss',
              'optimizer_i': optimizer_i}
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - set(_SCHEDULER_KEYS))
        if unknown or 'scheduler' not in entry:
            problem = f'unknown keys {unknown}' if unknown else "no 'scheduler' key"
            _fail(f"an 'lr_scheduler' dict has {problem}; it takes {list(_SCHEDULER_KEYS)} "
                  f"('scheduler' required).")
        config.update(entry)
    if not _is_scheduler(config['scheduler']):
        _fail(f"'lr_scheduler' must be an LR scheduler (torch.optim.lr_scheduler.*), got "
              f"{type(config['scheduler']).__name__}.")
    if config['interval'] not in ('epoch', 'step'):
        _fail(f"'interval' is {config['interval']!r}; use 'epoch' or 'step' (each optimizer "
              f"step of its optimizer).")
    freq = config['frequency']
    if isinstance(freq, bool) or not isinstance(freq, int) or freq < 1:
        _fail(f"the scheduler's 'frequency' is {freq!r}; use an int >= 1.")
    if optimizer is not None and config['scheduler'].optimizer is not optimizer:
        _fail("an 'lr_scheduler' belongs to another optimizer than the one in its dict.")
    return config


def _from_dicts(entries):
    optimizers, schedulers, frequencies = [], [], []
    for i, entry in enumerate(entries):
        unknown = sorted(set(entry) - set(_OPTIMIZER_KEYS))
        if unknown:
            _fail(f"dict {i} has unknown keys {unknown}; it takes {list(_OPTIMIZER_KEYS)}.")
        if 'optimizer' not in entry:
            _fail(f"dict {i} has no 'optimizer' key (keys: {sorted(entry)}).")
        opt = entry['optimizer']
        if not isinstance(opt, torch.optim.Optimizer):
            _fail(f"dict {i}: 'optimizer' is {type(opt).__name__}, not a torch.optim.Optimizer.")
        optimizers.append(opt)
        if entry.get('lr_scheduler') is not None:
            schedulers.append(_scheduler_config(entry['lr_scheduler'], i, opt))
        frequencies.append(entry.get('frequency'))
    if all(f is None for f in frequencies):
        return Optimizers(optimizers, schedulers, None)
    for i, freq in enumerate(frequencies):
        if isinstance(freq, bool) or not isinstance(freq, int) or freq < 1:
            _fail(f"dict {i} has 'frequency': {freq!r}; when one optimizer has a frequency, "
                  f"each needs an int >= 1 (batches it takes in turn).")
    return Optimizers(optimizers, schedulers, frequencies)


def normalize_optimizers(result):
    """``Optimizers`` from ``configure_optimizers()``'s return value (every classic form,
    and the dict forms)."""
    if isinstance(result, dict):
        return _from_dicts([result])
    if isinstance(result, (list, tuple)) and result and all(isinstance(r, dict) for r in result):
        configured = _from_dicts(list(result))
        _check_distinct(configured.optimizers)
        return configured
    optimizers, schedulers = _classic(result)
    _check_distinct(optimizers)
    owners = {id(opt): i for i, opt in enumerate(optimizers)}
    for i, sched in enumerate(schedulers):
        if id(sched.optimizer) not in owners:
            _fail(f"LR scheduler {i} ({type(sched).__name__}) steps an optimizer that is not "
                  f"among the optimizers returned, so it would change nothing that trains. "
                  f"Build it on one of them: `{type(sched).__name__}(optimizer, ...)` with the "
                  f"optimizer you return.")
    return Optimizers(optimizers, [_scheduler_config(s, owners[id(s.optimizer)], None)
                                   for s in schedulers], None)


def _check_distinct(optimizers):
    """The same optimizer object twice would step its parameters twice per batch."""
    seen = {}
    for i, opt in enumerate(optimizers):
        if id(opt) in seen:
            raise MisconfigurationException(
                f"configure_optimizers returned the same {type(opt).__name__} twice "
                f"(optimizers {seen[id(opt)]} and {i}), so it would step twice per batch. "
                f"Return each optimizer once.")
        seen[id(opt)] = i


def _kind(obj):
    """What ``obj`` is, for a message: its type's name, or the class it is."""
    if isinstance(obj, type):
        return f"the class {obj.__name__}; build it: {obj.__name__}(optimizer, ...)"
    return type(obj).__name__


def _classic(result):
    """``(optimizers, schedulers)`` lists from the classic return forms."""
    if isinstance(result, torch.optim.Optimizer):
        return [result], []
    if isinstance(result, (list, tuple)) and any(_is_scheduler(r) for r in result):
        sched = next(r for r in result if _is_scheduler(r))
        raise MisconfigurationException(
            f"configure_optimizers returned an LR scheduler ({type(sched).__name__}) outside "
            f"a list of schedulers ({type(result).__name__} of {len(result)} items). Return "
            f"optimizers and schedulers as two lists: `return [optimizer], [scheduler]`.")
    if (isinstance(result, (list, tuple)) and len(result) == 2
            and isinstance(result[0], (list, tuple)) and isinstance(result[1], (list, tuple))):
        optimizers, schedulers = list(result[0]), list(result[1])
    elif isinstance(result, (list, tuple)):
        optimizers, schedulers = list(result), []
    else:
        raise MisconfigurationException(
            f"configure_optimizers returned {type(result).__name__} ({result!r}). "
            f"Return {_FORMS}.")
    if not optimizers:
        raise MisconfigurationException(
            f"configure_optimizers returned no optimizer ({result!r}). Return {_FORMS}.")
    for opt in optimizers:
        if not isinstance(opt, torch.optim.Optimizer):
            raise MisconfigurationException(
                f"configure_optimizers: expected torch.optim.Optimizer objects, got "
                f"{type(opt).__name__}. Return {_FORMS}.")
    for sched in schedulers:
        if not _is_scheduler(sched):
            raise MisconfigurationException(
                f"configure_optimizers: the second list must hold LR schedulers "
                f"(torch.optim.lr_scheduler.*), got {_kind(sched)}.")
    return optimizers, schedulers

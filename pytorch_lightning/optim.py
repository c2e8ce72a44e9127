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

_FORMS = ('one optimizer, a list/tuple of optimizers, or a pair '
          '([optimizers], [lr_schedulers])')


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


def normalize_optimizers(result):
    """Turn ``configure_optimizers()``'s return value into ``(optimizers, schedulers)`` lists."""
    if isinstance(result, torch.optim.Optimizer):
        return [result], []
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
                f"(torch.optim.lr_scheduler.*), got {type(sched).__name__}.")
    return optimizers, schedulers

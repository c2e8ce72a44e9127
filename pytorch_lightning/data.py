"""Reading the module's dataloaders and deciding how many batches each loop runs."""
from .exceptions import MisconfigurationException

#: attribute names tried, in order, for each loop
LOADER_NAMES = {
    'train': ('tng_dataloader', 'train_dataloader'),
    'val': ('val_dataloader',),
    'test': ('test_dataloader',),
}


def find_loader_attr(module, stage):
    """The first dataloader attribute the module defines for ``stage``, or ``None``."""
    for name in LOADER_NAMES[stage]:
        if getattr(type(module), name, None) is not None:
            return name
    return None


def get_loader(module, stage):
    """Read the module's dataloader for ``stage`` (property or method). ``None`` if absent.

    A property is evaluated through its getter so an AttributeError inside it is shown
    as it is, not hidden by ``nn.Module.__getattr__``.
    """
    name = find_loader_attr(module, stage)
    if name is None:
        return None
    attr = getattr(type(module), name)
    if isinstance(attr, property):
        loader = attr.fget(module)
    else:
        loader = getattr(module, name)
        if callable(loader) and not hasattr(loader, '__iter__'):
            loader = loader()
    if loader is None:
        raise MisconfigurationException(
            f"{name} returned None. Return a torch.utils.data.DataLoader "
            f"(or any iterable of batches), or remove {name} to skip this loop.")
    if not hasattr(loader, '__iter__'):
        raise MisconfigurationException(
            f"{name} returned {type(loader).__name__}, which is not iterable. "
            f"Return a torch.utils.data.DataLoader.")
    return loader


def loader_length(loader):
    """``len(loader)`` or ``None`` when the loader has no length (iterable datasets)."""
    try:
        return len(loader)
    except TypeError:
        return None


def limited_batches(loader, percent, name):
    """How many batches of ``loader`` a loop runs given a ``*_percent_check`` fraction.
    ``None`` means "until the loader is exhausted" (no length known, percent 1.0)."""
    length = loader_length(loader)
    if length is None:
        if percent < 1.0:
            raise MisconfigurationException(
                f"{name} < 1.0 needs a loader with a length, but the loader has no len(). "
                f"Give the dataset a __len__ or set {name}=1.0.")
        return None
    if length == 0:
        return 0
    return max(1, int(length * percent))

"""Reading the module's dataloaders, deciding how many batches each loop runs, and
resumable sampling for exact mid-epoch resume, and the loaders of several processes (a
distributed sampler for training, disjoint shards for evaluation)."""
import collections.abc
import contextlib
import itertools

import torch

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
        skip = '' if stage == 'train' else f", or remove {name} to skip this loop"
        raise MisconfigurationException(
            f"{name} returned None. Return a torch.utils.data.DataLoader "
            f"(or any iterable of batches) from {name}{skip}.")
    if isinstance(loader, type):
        raise MisconfigurationException(
            f"{name} returned the class {loader.__name__}, not a loader. Return an instance, "
            f"e.g. `DataLoader(dataset, batch_size=32)`.")
    if not hasattr(loader, '__iter__'):
        raise MisconfigurationException(
            f"{name} returned {type(loader).__name__}, which is not iterable. "
            f"Return a torch.utils.data.DataLoader.")
    if stage != 'test' and isinstance(loader, collections.abc.Iterator):
        # read once per fit, iterated every epoch / validation: a second pass would be empty
        raise MisconfigurationException(
            f"{name} returned a {type(loader).__name__}, an iterator that can be read only "
            f"once, but fit iterates the same {name} in every "
            f"{'epoch' if stage == 'train' else 'validation run (and the sanity check)'}, so "
            f"later passes would get no batch. Return the DataLoader itself (not iter(loader) "
            f"or a generator), or a list of batches.")
    return loader


def get_loaders(module, stage):
    """The module's loaders for ``stage`` (``'val'`` or ``'test'``) as a list: empty when the
    module has no such loader, one item for a single loader, and one item per loader when it
    returned a list (or tuple) of DataLoaders. A list of ONE DataLoader is a single loader.
    Any other list is one iterable of batches, as before; a list holding DataLoaders and
    something else is an error."""
    loader = get_loader(module, stage)
    if loader is None:
        return []
    if not isinstance(loader, (list, tuple)):
        return [loader]
    from torch.utils.data import DataLoader
    kinds = [isinstance(item, DataLoader) for item in loader]
    if loader and all(kinds):
        return list(loader)
    if any(kinds):
        name = find_loader_attr(module, stage)
        bad = kinds.index(False)
        raise MisconfigurationException(
            f"{name} returned a list of {len(loader)} items, some of them DataLoaders, but "
            f"item {bad} is {type(loader[bad]).__name__}. Return a DataLoader, or a list "
            f"holding only DataLoaders (one per {stage} set).")
    return [loader]


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


# ---------------------------------------------------------------------------- exact resume
class ResumableBatchSampler:
    """Wraps a DataLoader's batch sampler so a resumed epoch can skip the batches already
    trained on by drawing their *indices* only (no data is loaded for them), and so the
    trainer can act at the moments that matter for exact resume.

    It draws from the inner sampler exactly as the plain loader would (lazily), so random
    permutations come out identical. Everything happens when an iterator is first *advanced*,
    never when it is created: torch's multi-process loader creates an iterator it never reads
    (and persistent workers create a new one per epoch), so only the iterator that really
    draws an epoch's index lists counts as that epoch's.

    ``draws`` counts the calls made to the inner sampler by the current epoch's iterator (the
    call that found it exhausted included). With worker processes torch draws index lists
    ahead of the batches the loop has trained on, so ``draws`` can run ahead of them.
    """

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.draws = 0
        self.epochs_started = 0  # iterators that began drawing (one per epoch)
        self._plan = None

    def plan_epoch(self, at_start=None, skip=0, at_draws=None, then=None):
        """Instructions for the next iterator that begins drawing (the next epoch):
        ``at_start()`` runs at its first ``next()``, before the inner sampler draws (the
        trainer captures or restores the epoch-start RNG there); the first ``skip`` index
        lists are drawn and dropped; ``then()`` runs once ``draws`` has reached
        ``at_draws``, before the next call to the inner sampler (or when it is exhausted)."""
        self._plan = (at_start, skip, at_draws, then)

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        return self._epoch()

    def _epoch(self):
        # a generator: this body runs at the first next(), so a plan is spent only by an
        # iterator that draws
        at_start, skip, at_draws, then = self._plan or (None, 0, None, None)
        self._plan = None
        self.draws = 0
        self.epochs_started += 1
        if at_start is not None:
            at_start()
        inner = iter(self.batch_sampler)
        while True:
            if then is not None and self.draws == at_draws:
                then, done = None, then
                done()
            batch = next(inner, _EXHAUSTED)
            self.draws += 1
            if batch is _EXHAUSTED:
                break
            if self.draws > skip:
                yield batch
        if then is not None:  # at_draws not reached (always reached with the same data)
            then()


_EXHAUSTED = object()

_LOADER_ARGS = ('num_workers', 'collate_fn', 'pin_memory', 'timeout', 'worker_init_fn',
                'multiprocessing_context', 'generator', 'persistent_workers', 'pin_memory_device')


def _loader_kwargs(loader):
    """The arguments that rebuild ``loader`` around another sampler (workers, collate, pinned
    memory, ...), without its dataset, sampler and batching."""
    kwargs = {name: getattr(loader, name) for name in _LOADER_ARGS if hasattr(loader, name)}
    if kwargs.get('num_workers', 0) > 0:
        kwargs['prefetch_factor'] = loader.prefetch_factor
    else:
        kwargs.pop('persistent_workers', None)
    if hasattr(loader, 'in_order'):
        kwargs['in_order'] = loader.in_order
    return kwargs


def _plain_map_loader(loader):
    from torch.utils.data import DataLoader, IterableDataset
    return (type(loader) is DataLoader and not isinstance(loader.dataset, IterableDataset)
            and loader.batch_sampler is not None)


def make_resumable(loader):
    """``(loader, sampler)``: a plain map-style ``DataLoader`` is rebuilt once around a
    ``ResumableBatchSampler`` (same dataset, sampler, workers and collate); anything else is
    returned unchanged with ``sampler=None`` (resuming it replays the skipped batches)."""
    from torch.utils.data import DataLoader
    if not _plain_map_loader(loader):
        return loader, None
    sampler = ResumableBatchSampler(loader.batch_sampler)
    return DataLoader(loader.dataset, batch_sampler=sampler, **_loader_kwargs(loader)), sampler


def release_workers(loader):
    """Stop the worker processes a ``DataLoader`` with ``persistent_workers=True`` keeps
    between epochs (torch holds them in the loader's iterator, and shuts them down when that
    iterator is dropped). For the loaders ``fit`` built itself, at its end; the user's own
    loaders keep theirs."""
    if getattr(loader, '_iterator', None) is not None:
        loader._iterator = None


@contextlib.contextmanager
def workers_stopped_on_error(iterator, loader):
    """Run the body that iterates ``iterator`` (an iterator of ``loader``); when it raises
    (an error, Ctrl-C), shut the iterator's worker processes down before the exception
    leaves. torch stops them only when the iterator is dropped, but the traceback keeps the
    frames that hold it, and a notebook keeps the last traceback (``sys.last_traceback``):
    the workers would live on until the next error. A persistent iterator is also taken off
    its loader, so the loader's next ``iter()`` starts new workers. A no-op for iterators
    without workers."""
    try:
        yield
    except BaseException:
        shutdown = getattr(iterator, '_shutdown_workers', None)
        if shutdown is not None:
            shutdown()
            if getattr(loader, '_iterator', None) is iterator:
                loader._iterator = None
        raise


# ---------------------------------------------------------------------------- several processes
def distributed_loader(loader, rank, world_size, seed, name):
    """``(loader, distributed_sampler)`` for training on rank ``rank`` of ``world_size``.

    A plain ``DataLoader`` with the default sampler (``shuffle=True`` or ``False``) is rebuilt
    around a ``DistributedSampler`` that keeps its shuffle (drawn from ``seed`` and the
    epoch, the same on every rank), its per-process batch size, ``drop_last`` (which the
    sampler also uses: with it the tail that does not split evenly is dropped, without it
    the last samples are repeated so every rank gets as many batches), workers, collate
    function and pinned memory. A loader that already uses a ``DistributedSampler`` is kept.
    Anything else (a custom sampler or batch sampler, an iterable dataset) is kept as it is,
    with one warning naming ``name``: every process would then draw the same batches.
    ``distributed_sampler`` is ``None`` unless it needs ``set_epoch`` each epoch."""
    import warnings
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
    from torch.utils.data.distributed import DistributedSampler
    sampler = getattr(loader, 'sampler', None)
    if isinstance(sampler, DistributedSampler):
        return loader, sampler
    default = _plain_map_loader(loader) and type(loader.batch_sampler) is BatchSampler and (
        type(sampler) is SequentialSampler or (
            type(sampler) is RandomSampler and not sampler.replacement
            and sampler._num_samples is None))
    if not default:
        kind = type(sampler).__name__ if sampler is not None else type(loader).__name__
        warnings.warn(
            f"{name} uses a {kind}, which is not a DistributedSampler, so each of the "
            f"{world_size} processes trains on the same batches. Use a DataLoader with "
            f"shuffle=True/False (the trainer then shards it) or a DistributedSampler.",
            stacklevel=3)
        return loader, None
    shards = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank,
                                shuffle=type(sampler) is RandomSampler, seed=seed,
                                drop_last=loader.drop_last)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=shards,
                      drop_last=loader.drop_last, **_loader_kwargs(loader)), shards


class ShardSampler(torch.utils.data.Sampler):
    """Rank ``rank``'s shard of ``sampler`` for evaluation: every ``world_size``-th index,
    starting at ``rank``. The shards are disjoint and not padded, so every sample is
    evaluated exactly once across the ranks (shards may differ in length by one)."""

    def __init__(self, sampler, rank, world_size):
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.rank, None, self.world_size)

    def __len__(self):
        return max(0, (len(self.sampler) - self.rank + self.world_size - 1) // self.world_size)


def shard_loader(loader, rank, world_size, name):
    """``(loader, sharded)``: a plain map-style ``DataLoader`` rebuilt around a
    ``ShardSampler`` of its sampler (same batch size, workers, collate), ``sharded=True``.
    Anything else (an iterable dataset, a custom batch sampler) is evaluated whole by every
    rank (``sharded=False``; one warning naming ``name``): the metrics are still exact, each
    rank computes them from all the data."""
    import warnings
    from torch.utils.data import BatchSampler, DataLoader
    if not (_plain_map_loader(loader) and type(loader.batch_sampler) is BatchSampler):
        warnings.warn(
            f"{name} returned a {type(loader).__name__} the trainer cannot shard (an iterable "
            f"dataset or a custom batch sampler), so each of the {world_size} processes "
            f"evaluates all of it. Return a plain DataLoader to split the work.", stacklevel=3)
        return loader, False
    shard = ShardSampler(loader.sampler, rank, world_size)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=shard,
                      drop_last=loader.drop_last, **_loader_kwargs(loader)), True


def _generator_owners(loader):
    """``(name, object)`` for each place a loader's shuffling generator can live: the loader,
    its ``sampler``, and the sampler inside its batch sampler (after ``make_resumable`` the
    loader's own ``sampler`` attribute is a placeholder; the user's sampler is in there)."""
    batch_sampler = getattr(loader, 'batch_sampler', None)
    if isinstance(batch_sampler, ResumableBatchSampler):
        batch_sampler = batch_sampler.batch_sampler
    return (('loader', loader), ('sampler', getattr(loader, 'sampler', None)),
            ('batch_sampler.sampler', getattr(batch_sampler, 'sampler', None)))


def generator_states(loader):
    """States of the torch generators a loader's shuffling uses (loader and samplers)."""
    states = {}
    for name, owner in _generator_owners(loader):
        gen = getattr(owner, 'generator', None)
        if isinstance(gen, torch.Generator):
            states[name] = gen.get_state()
    return states


def restore_generator_states(loader, states):
    for name, owner in _generator_owners(loader):
        if name in states:
            owner.generator.set_state(states[name])

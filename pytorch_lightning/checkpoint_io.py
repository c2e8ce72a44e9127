"""Checkpoint files: atomic writes, readable errors, RNG capture.

A checkpoint is the user's ``get_save_dict()`` content with one reserved key, ``'lightning'``,
holding what the trainer needs to resume exactly (built by the trainer from each part's
``state_dict()``; this module never looks inside callbacks).
"""
import argparse
import atexit
import glob
import os
import pickle
import random
import tempfile
import threading
import zipfile

import numpy as np
import torch

from .exceptions import CheckpointError  # noqa: F401  (re-exported for callers)
from .hparams import hparams_from_typed, typed_hparams
from .utilities import durable_replace, pid_alive
from .utilities._version import __version__

KEY = 'lightning'
#: Longest wait for a background save to become durable (an fsync on a hung network file
#: system can block); past it ``CheckpointError`` is raised, and the file keeps its temporary
#: name, so no half-finished checkpoint is ever taken for a good one.
FINISH_TIMEOUT_S = 600.0
#: A save that outlived one whole wait gets only this long at each later wait (``fit``
#: closing after the error, ``wait_for_saves``, the wait at exit) before the error is raised
#: again, so a hung disk costs one ``FINISH_TIMEOUT_S``, not one per wait.
STUCK_RECHECK_S = 1.0


# ------------------------------------------------------------------------------ writing
class _Finisher:
    """Runs the durable tail of a save (fsync, rename, folder fsync) on a background thread,
    one save at a time and in order. fsync and rename release the GIL, so training goes on
    meanwhile. An error there is raised by the next ``atomic_save`` or ``wait_for_saves``."""

    def __init__(self):
        self._thread = None
        self._error = None
        self._stuck = False  # the thread outlived a whole wait (see STUCK_RECHECK_S)

    def _run(self, job):
        try:
            job()
        except BaseException as err:  # handed to the training thread, never dropped
            self._error = err

    def submit(self, job):
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), daemon=True,
                                        name='checkpoint-finisher')
        self._thread.start()

    def wait(self):
        if self._thread is not None:
            self._thread.join(STUCK_RECHECK_S if self._stuck else FINISH_TIMEOUT_S)
            if self._thread.is_alive():
                self._stuck = True
                raise CheckpointError(
                    f"a checkpoint was not durable after {FINISH_TIMEOUT_S:.0f} s (fsync or "
                    f"rename is stuck: a hung or full file system?). The checkpoint before it "
                    f"is still complete; check the disk, then resume from that one.")
            self._thread, self._stuck = None, False
        if self._error is not None:
            err, self._error = self._error, None
            raise CheckpointError(f'a checkpoint could not be finished: {err!r}') from err


_finisher = _Finisher()
atexit.register(_finisher.wait)


def wait_for_saves():
    """Block until every background save is durable under its real name; raise
    ``CheckpointError`` if one failed."""
    _finisher.wait()


def _finish(tmp, path, then):
    folder = os.path.dirname(path)
    durable_replace(tmp, path)
    pattern = glob.escape('.' + os.path.basename(path)) + '.*.tmp'
    for stale in glob.glob(os.path.join(glob.escape(folder), pattern)):
        pid = stale[:-len('.tmp')].split('.')[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            os.remove(stale)  # left by a process killed while saving
    if then is not None:
        then()


def atomic_save(obj, path, background=False, then=None):
    """``torch.save(obj)`` to a temporary file in the same folder, fsync it, then rename it
    over ``path``: a crash at any moment leaves either the old file or the new one, never a
    truncated file under ``path``.

    ``background=True``: only the write happens now; fsync and rename finish on a background
    thread (``wait_for_saves`` waits for them). ``then``: called after the rename (e.g. to
    delete a file this one replaces)."""
    _finisher.wait()
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.{os.getpid()}.', suffix='.tmp',
                               dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)  # the path form uses torch's native file writer (fastest)
    except BaseException:
        os.remove(tmp)
        raise
    if background:
        _finisher.submit(lambda: _finish(tmp, path, then))
    else:
        _finish(tmp, path, then)


# ------------------------------------------------------------------------------ reading
def load(path):
    """Read a checkpoint written by ``atomic_save``; ``CheckpointError`` names the file and
    the problem when it is missing, truncated, corrupt or not a pytorch_lightning checkpoint."""
    path = os.fspath(path)
    return _ours(_read(path), path)


def _ours(checkpoint, path):
    """``checkpoint`` (read from ``path``) when it has the ``'lightning'`` section, else the
    ``CheckpointError`` that says it is not a pytorch_lightning checkpoint."""
    if not isinstance(checkpoint, dict) or KEY not in checkpoint:
        keys = (sorted(checkpoint)[:10] if isinstance(checkpoint, dict)
                else type(checkpoint).__name__)
        raise CheckpointError(
            f"{path!r} is a torch file but not a pytorch_lightning checkpoint (no "
            f"{KEY!r} section; found {keys}). Load plain weights with "
            f"model.load_state_dict(torch.load(path)).")
    return checkpoint


#: What torch.load raises for a file that is truncated, corrupt or not a torch.save file.
_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
               OSError)


def _read(path):
    """What the ``torch.save`` file at ``path`` holds, on the CPU; ``CheckpointError`` names
    the file when it is missing, truncated or corrupt."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (or is not a file).")
    try:
        # weights_only=False: get_save_dict() may return any object. What the library itself
        # writes loads with weights_only=True too (see dump).
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except _UNREADABLE as err:
        size = os.path.getsize(path)
        raise CheckpointError(
            f"checkpoint {path!r} ({size} bytes) cannot be read: it is truncated or not a "
            f"torch.save file ({type(err).__name__}: {err}). Use another checkpoint, e.g. "
            f"last.ckpt or an earlier one.") from err
    return checkpoint


def peek(path):
    """The ``'lightning'`` section of the checkpoint at ``path`` (a dict), or ``None`` when
    the file cannot be read or is not a pytorch_lightning checkpoint. Cheap for any model
    size: the file is memory-mapped, so only its small pickled part is read, never the
    tensors' data."""
    try:
        section = torch.load(os.fspath(path), map_location='cpu', weights_only=False,
                             mmap=True)[KEY]
    except _UNREADABLE + (KeyError, TypeError):  # torn, not torch's, or not ours
        return None
    return section if isinstance(section, dict) else None


def batches_done(path):
    """The training batches done that the checkpoint at ``path`` records (its trainer state's
    ``total_batches``), or ``None`` when the file cannot be read or is not a pytorch_lightning
    checkpoint (``peek``: cheap for any model size)."""
    try:
        return peek(path)['trainer_state']['total_batches']
    except (KeyError, TypeError):
        return None


def load_weights(path):
    """A checkpoint (``load``), or else a ``torch.save`` file holding ``{'state_dict': ...}``
    (given an empty ``'lightning'`` section: no saved class, no hparams). A missing,
    truncated or corrupt file, or one holding anything else, raises ``load``'s
    ``CheckpointError``."""
    path = os.fspath(path)
    weights = _read(path)
    if isinstance(weights, dict) and KEY not in weights and 'state_dict' in weights:
        return {**weights, KEY: {}}
    return _ours(weights, path)


def class_name(cls):
    """``module.QualName`` of a class, as ``model_class`` stores it."""
    return f'{cls.__module__}.{cls.__qualname__}'


def saved_hparams(checkpoint):
    """The hyperparameters a checkpoint was written with, in the container they had (dict or
    ``argparse.Namespace``) and with their value types; ``None`` when the model had none.
    Checkpoints from before ``hparams_typed`` give their ``hparams`` dict as a Namespace
    (``None`` when it is empty), as they always did."""
    meta = checkpoint[KEY]
    if 'hparams_typed' in meta:
        return hparams_from_typed(meta['hparams_typed'])
    return argparse.Namespace(**meta['hparams']) if meta.get('hparams') else None


def _load_hint(saved_class, model):
    if saved_class and saved_class != class_name(type(model)):
        return (f"It was saved from {saved_class}: call load_from_checkpoint / "
                f"load_from_metrics on that class instead.")
    return "Load it into the model class and hyperparameters that wrote it."


def construction_error(cls, checkpoint, path, hparams, source, error):
    """The ``CheckpointError`` for ``cls`` failing to construct with the ``hparams`` read from
    ``source`` while loading ``path`` (raise it ``from error``): it names the class the
    checkpoint was saved from, the class asked for, the error and what to do."""
    saved = checkpoint[KEY].get('model_class')
    asked = class_name(cls)
    failed = (f"building {cls.__name__} with {source} ({hparams!r:.300}) raised "
              f"{type(error).__name__}: {error}")
    if saved and saved != asked:
        return CheckpointError(
            f"checkpoint {os.fspath(path)!r} was saved from {saved}, not {asked}, and {failed}. "
            f"Call load_from_checkpoint / load_from_metrics on {saved} (the class that wrote "
            f"it) instead.")
    origin = f'checkpoint {os.fspath(path)!r} (saved from {saved})' if saved else (
        f'weights file {os.fspath(path)!r}')
    return CheckpointError(
        f"{origin}: {failed}. {cls.__name__}.__init__ no longer accepts the hyperparameters the "
        f"model was saved with: accept them again (e.g. give a new hyperparameter a default), "
        f"or build the model yourself and call load_model_specific(checkpoint).")


def describe_mismatch(model, state_dict):
    """Human-readable missing/unexpected keys and shape mismatches, or '' if they match. A
    lazy parameter of ``model`` (``nn.LazyLinear`` before its first forward) has no shape
    yet and takes the saved one when loaded, so its shape is not compared."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
              for k in own if k in state_dict and hasattr(state_dict[k], 'shape')
              and not torch.nn.parameter.is_lazy(own[k])
              and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if shapes:
        parts.append('shape mismatches ' + '; '.join(shapes[:8]))
    return ', '.join(parts)


_COMPILED = '_orig_mod.'  # what torch.compile puts into the names of a compiled submodule


def _compiled_names_matched(model, state_dict):
    """``state_dict`` with its keys renamed to ``model``'s when the two differ only by
    ``torch.compile``'s ``_orig_mod.`` (a submodule compiled in one and not in the other);
    ``None`` when the keys already match or differ otherwise."""
    own = model.state_dict().keys()
    if own == state_dict.keys():
        return None
    plain = {key.replace(_COMPILED, ''): key for key in own}
    if len(plain) != len(own) or len(state_dict) != len(own):
        return None
    renamed = {}
    for key, value in state_dict.items():
        target = plain.get(key.replace(_COMPILED, ''))
        if target is None:
            return None
        renamed[target] = value
    return renamed


def load_into_model(model, checkpoint, path):
    """Call the model's ``load_model_specific(checkpoint)``, with the state dict's keys renamed
    to the model's when they differ only by ``torch.compile``'s ``_orig_mod.``. A wrong model
    gives a ``CheckpointError`` naming the file, the saved class and what does not match, and
    an error raised by ``load_model_specific`` is re-raised as a ``CheckpointError`` naming
    the saved class (the original error chained)."""
    saved_class = checkpoint[KEY].get('model_class')
    state = checkpoint.get('state_dict')
    if isinstance(state, dict):
        renamed = _compiled_names_matched(model, state)
        if renamed is not None:
            checkpoint = {**checkpoint, 'state_dict': renamed}
            state = renamed
        problem = describe_mismatch(model, state)
        if problem:
            raise CheckpointError(
                f"checkpoint {os.fspath(path)!r} (saved from {saved_class or '?'}) does not fit "
                f"{type(model).__name__}: {problem}. {_load_hint(saved_class, model)}")
    try:
        model.load_model_specific(checkpoint)
    except Exception as err:
        raise CheckpointError(
            f"load_model_specific failed for checkpoint {os.fspath(path)!r} (saved from "
            f"{saved_class or '?'}) into {type(model).__name__}: {type(err).__name__}: {err}. "
            f"{_load_hint(saved_class, model)}") from err


# ------------------------------------------------------------------------------ RNG
def capture_rng():
    """The state of every random generator a training step can touch, as tensors and plain
    Python types (so ``torch.load(weights_only=True)`` reads it):

    ``{'python': (version, int64 tensor of its 625 words, gauss),
    'numpy': ('MT19937', int64 tensor of its 624 key words, pos, has_gauss, cached_gaussian),
    'torch': uint8 tensor, 'cuda': [uint8 tensor per device] (only once CUDA is in use)}``.

    The word arrays are tensors rather than tuples of ints because ``torch.save`` pickles a
    tuple int by int (measured: ~1 ms of a small model's checkpoint went there)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'python': (version, torch.from_numpy(np.asarray(internal, dtype=np.int64)), gauss),
             'numpy': (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos),
                       int(has_gauss), float(cached)),
             'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state):
    """Set every generator back to a ``capture_rng`` state. States written before they were
    tensors (numpy uint32 arrays and numpy's own state tuple) are accepted too."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, np.asarray(keys).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        # one state per GPU the saving process saw: a process that sees fewer (resumed on
        # another machine, or a DDP rank) restores those it has; set_rng_state_all would
        # index a GPU that does not exist
        torch.cuda.set_rng_state_all(state['cuda'][:torch.cuda.device_count()])


def library_version():
    return __version__


# ------------------------------------------------------------------------------ assembling
def callback_keys(callbacks):
    """Stable, unique state keys: ``state_key``, with ``#<n>`` added for repeats."""
    keys, seen = [], {}
    for cb in callbacks:
        key = cb.state_key
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f'{key}#{seen[key] - 1}')
    return keys


def plain_types(value):
    """``value`` with everything ``torch.load(weights_only=True)`` refuses turned into what it
    accepts, recursively through dicts, lists and tuples: numpy scalars become Python numbers
    (or bools, or str), numpy arrays become tensors, ``os.PathLike`` becomes str, an
    ``argparse.Namespace`` becomes a dict of its attributes, a namedtuple a plain tuple, and
    dict subclasses plain dicts. Tensors and Python's own scalars stay as they are; any other
    object is left as it is (a checkpoint holding one needs ``weights_only=False``)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in 'biufc':  # numbers (not str/object)
        return torch.tensor(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {plain_types(key): plain_types(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain_types(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def dump(trainer, position, durable_logs=False, ranks=None, rng=None):
    """The checkpoint dict for ``trainer`` right now. ``position`` says where the loop
    stands (see ``Trainer._loop_position``) and ``rng`` is the random state that goes with it
    (``None``: the generators' state now). Every part contributes its own ``state_dict()``.
    ``durable_logs``: wait until the logger's rows are on disk (see ``TestTubeLogger``).
    ``ranks``: with several processes, each rank's ``{'position', 'rng'}`` in rank order
    (``restore`` gives each rank its own back when the world has the same size).

    The whole ``'lightning'`` section goes through ``plain_types``, so a checkpoint whose
    ``get_save_dict()`` holds only tensors and plain types loads with
    ``torch.load(path, weights_only=True)``."""
    module = trainer.module
    checkpoint = dict(module.get_save_dict())
    if KEY in checkpoint:
        raise CheckpointError(
            f"get_save_dict returned a {KEY!r} key, which is reserved for the trainer's "
            f"state. Rename it.")
    grads = None
    if trainer.state.accumulation_position:  # mid-window: the partial gradient sum
        grads = [[None if p.grad is None else p.grad.detach().clone() for p in group]
                 for group in trainer.param_groups]
    callbacks = trainer.checkpointed_callbacks
    typed = typed_hparams(getattr(module, 'hparams', None))
    hook = getattr(module, 'on_save_checkpoint', None)  # classic: add to the checkpoint
    if hook is not None:
        hook(checkpoint)
    checkpoint[KEY] = plain_types({
        'library_version': __version__,
        'model_class': class_name(type(module)),
        'hparams': {} if typed is None else typed['values'],  # for readers of older versions
        'hparams_typed': typed,
        'trainer_state': trainer.state.state_dict(),
        'position': position,
        'rng': capture_rng() if rng is None else rng,
        'optimizers': [opt.state_dict() for opt in trainer.optimizers],
        'lr_schedulers': [sched.state_dict() for sched in trainer.lr_schedulers],
        'callbacks': dict(zip(callback_keys(callbacks), (cb.state_dict() for cb in callbacks))),
        'logger': (trainer.logger.state_dict(trainer.state.total_batches, durable_logs)
                   if hasattr(trainer.logger, 'state_dict') else None),
        'accumulated_grads': grads,
        'precision': trainer.precision.state_dict(),
        'val_metrics': dict(trainer.val_metrics),
        'ranks': ranks,
    })
    return checkpoint


def restore(trainer, checkpoint, path):
    """Load ``checkpoint`` into the module, optimizers, schedulers, callbacks, logger and
    trainer state; returns the saved ``(position, rng)``: this rank's own when the checkpoint
    was written by a world of the same size (DDP), else the saving process's (rank 0's)."""
    meta = checkpoint[KEY]
    load_into_model(trainer.module, checkpoint, path)
    hook = getattr(trainer.module, 'on_load_checkpoint', None)  # classic: read what it added
    if hook is not None:
        hook(checkpoint)
    for kind, parts, saved in (('optimizers', trainer.optimizers, meta['optimizers']),
                               ('lr_schedulers', trainer.lr_schedulers, meta['lr_schedulers'])):
        if len(parts) != len(saved):
            raise CheckpointError(
                f"checkpoint {os.fspath(path)!r} holds {len(saved)} {kind}, but "
                f"configure_optimizers returned {len(parts)}. Resume with the same "
                f"configure_optimizers that wrote it.")
        for part, state in zip(parts, saved):
            try:
                part.load_state_dict(state)
            except (ValueError, KeyError) as err:
                raise CheckpointError(f"checkpoint {os.fspath(path)!r}: cannot load {kind} "
                                      f"state ({err}).") from err
    callbacks = trainer.checkpointed_callbacks
    saved_callbacks = meta['callbacks']
    for key, cb in zip(callback_keys(callbacks), callbacks):
        if key in saved_callbacks:
            cb.load_state_dict(saved_callbacks[key])
    trainer.state.load_state_dict(meta['trainer_state'])
    if meta['accumulated_grads'] is not None:
        for group, grads in zip(trainer.param_groups, meta['accumulated_grads']):
            for param, grad in zip(group, grads):
                param.grad = None if grad is None else grad.to(param.device)
    trainer.val_metrics = dict(meta['val_metrics'])
    trainer.precision.load_state_dict(meta.get('precision') or {})
    if (trainer.logger is not None and meta['logger'] is not None
            and hasattr(trainer.logger, 'load_state_dict')):
        trainer.logger.load_state_dict(meta['logger'])
    ranks, world = meta.get('ranks'), trainer.world
    if ranks and len(ranks) == world.world_size:
        return ranks[world.rank]['position'], ranks[world.rank]['rng']
    return meta['position'], meta['rng']

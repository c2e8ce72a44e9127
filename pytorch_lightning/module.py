"""The user contract: subclass ``RootModule`` and write only the science.

This module knows nothing about how it is run (no trainer, callbacks, loggers or placement).
"""
import collections
import numbers

import torch
from torch import nn

from . import optim as _optim
from .exceptions import MisconfigurationException
from .utilities import StepOutputs

#: Hooks a module may override, with the arguments the trainer passes (classic form).
#: Seed-style overrides that take no arguments are accepted for every hook.
HOOKS = (
    'on_sanity_check_start', 'on_epoch_start', 'on_batch_start', 'on_after_backward',
    'on_before_zero_grad', 'on_batch_end', 'on_pre_performance_check',
    'on_post_performance_check', 'on_epoch_end',
)


def _is_scalar(value):
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _metrics_of_outputs(outputs, loss_key, end_name):
    """What the default ``validation_end``/``test_end`` return. With one loader ``outputs`` is
    the flat list of step outputs: ``_mean_of_outputs``. With several it is a list of
    ``StepOutputs``, one per loader (how the trainer passes them): each loader's means get the
    suffix ``/<loader index>`` (``val_loss/0``, ``val_loss/1``), and loader 0's means are
    also returned without suffix, so ``val_loss`` is loader 0's."""
    if not outputs or not all(isinstance(out, StepOutputs) for out in outputs):
        return _mean_of_outputs(outputs, loss_key, end_name)
    metrics = {}
    for i, loader_outputs in enumerate(outputs):
        means = _mean_of_outputs(loader_outputs, loss_key, end_name)
        if i == 0:
            metrics.update(means)
        metrics.update((f'{key}/{i}', value) for key, value in means.items())
    return metrics


def _mean_of_outputs(outputs, loss_key, end_name):
    """The mean of every scalar that the step outputs carry under the same key. Each output
    is weighted by its batch size (``outputs.batch_sizes`` when the trainer provides it and it
    matches the list, else 1), so per-batch means give the per-sample mean. A bare scalar
    output counts as ``{loss_key: output}``; a tuple or list output (values without names)
    raises ``MisconfigurationException``; other outputs that are neither a dict nor a scalar
    (``None``) are skipped, as are non-scalar dict values, except a tensor under ``loss_key``
    (a per-sample loss): that raises too, since the checkpoint and early stopping monitor
    it."""
    weights = getattr(outputs, 'batch_sizes', None)
    if weights is None or len(weights) != len(outputs):  # e.g. an override filtered the list
        weights = [1] * len(outputs)
    sums, totals = collections.OrderedDict(), collections.Counter()
    for out, weight in zip(outputs, weights):
        if isinstance(out, torch.Tensor) and out.numel() != 1:
            step = end_name.replace('_end', '_step')
            raise MisconfigurationException(
                f"{step} returned a tensor of shape {tuple(out.shape)}; the default {end_name} "
                f"averages scalars only. Return a scalar (e.g. the loss) or a dict of scalars, "
                f"or override {end_name} to collate the outputs yourself.")
        if _is_scalar(out):
            out = {loss_key: out}
        if isinstance(out, (tuple, list)):  # (loss, dict) was unpacked by the trainer
            step = end_name.replace('_end', '_step')
            metric = loss_key.split('_')[0] + '_acc'
            raise MisconfigurationException(
                f"{step} returned a {type(out).__name__} of {len(out)} items "
                f"({', '.join(type(o).__name__ for o in out)}); the default {end_name} reads a "
                f"scalar, a dict of scalars or a (loss, dict) pair. Name the values: e.g. "
                f"`return loss, {{'{metric}': acc}}`, or override {end_name} to collate the "
                f"outputs yourself.")
        if not isinstance(out, dict):
            continue
        for key, value in out.items():
            if not _is_scalar(value):
                if key == loss_key and isinstance(value, torch.Tensor):  # what is monitored
                    step = end_name.replace('_end', '_step')
                    raise MisconfigurationException(
                        f"{step} returned {key!r} of shape {tuple(value.shape)} (a loss per "
                        f"sample?); the default {end_name} averages scalars only, so it would "
                        f"be dropped. Return a scalar: reduce it, e.g. `{key}.mean()`, or "
                        f"override {end_name} to collate the outputs yourself.")
                continue
            if isinstance(value, torch.Tensor):
                value = value.detach().float()
            value = value * weight
            sums[key] = sums[key] + value if key in sums else value
            totals[key] += weight
    return {key: sums[key] / totals[key] for key in sums}


def _count_params(module):
    """``module``'s parameter count for the summary, as text: ``'1,234'``, with
    ``' + uninitialized'`` when a lazy parameter has no size yet (it cannot be counted)."""
    params = list(module.parameters())
    lazy = any(nn.parameter.is_lazy(p) for p in params)
    text = f'{sum(p.numel() for p in params if not nn.parameter.is_lazy(p)):,}'
    return text + ' + uninitialized' if lazy else text


class RootModule(nn.Module):
    """Base class for research models.

    ``__init__`` of a subclass may skip ``super().__init__()`` (the seed example does): the
    ``nn.Module`` machinery is set up before the subclass ``__init__`` runs.

    Required: ``training_step``, ``configure_optimizers`` and a training dataloader
    (``tng_dataloader`` or ``train_dataloader``, as a property or a method). Everything
    else is optional; see docs/api.md for when each method runs.
    """

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        nn.Module.__init__(self)
        self.hparams = None
        return self

    def __init__(self, hparams=None):
        if '_parameters' not in self.__dict__:  # constructed without __new__ (e.g. copy)
            nn.Module.__init__(self)
        self.hparams = hparams

    def __getstate__(self):
        """Pickling (``copy.deepcopy``, ``torch.save(model)``, the processes DDP starts) leaves
        out ``trainer`` and ``experiment``, which the trainer sets while it runs the module:
        they belong to the run, not to the model."""
        state = dict(super().__getstate__())
        state.pop('trainer', None)
        state.pop('experiment', None)
        return state

    # ------------------------------------------------------------------ evaluation ends
    def validation_end(self, outputs):
        """Collate the outputs of every ``validation_step`` (a list, in order); return a dict
        of metrics.

        Default: for each scalar that the step dicts carry under the same key (e.g.
        ``val_loss``, ``val_acc``), its mean over the samples: each step's value is weighted
        by the number of samples in its batch (``outputs.batch_sizes``), so a small last
        batch counts for its size only. A step that returned a bare scalar tensor counts as
        ``{'val_loss': tensor}``.

        With several val loaders ``outputs`` holds one such list per loader (each a
        ``StepOutputs``, in loader order). The default then returns each loader's means with
        the loader's index as a suffix (``val_loss/0``, ``val_loss/1``, ...) and loader 0's
        means without suffix too, so ``val_loss`` (what the default checkpoint and early
        stopping monitor) is loader 0's.
        """
        return _metrics_of_outputs(outputs, 'val_loss', 'validation_end')

    def test_end(self, outputs):
        """Collate the outputs of every ``test_step`` (one list per loader with several test
        loaders); return a dict of metrics. Default: as ``validation_end`` (suffixes included),
        with a bare scalar counting as ``{'test_loss': tensor}``."""
        return _metrics_of_outputs(outputs, 'test_loss', 'test_end')

    # ------------------------------------------------------------------ saving / loading
    def get_save_dict(self):
        """What to save in a checkpoint. Default: ``{'state_dict': self.state_dict()}``."""
        return {'state_dict': self.state_dict()}

    def load_model_specific(self, checkpoint):
        """Restore from the dict ``get_save_dict`` produced. Default: load ``state_dict``."""
        self.load_state_dict(checkpoint['state_dict'])

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path):
        """Rebuild the model from a checkpoint on the CPU: construct it with the saved hparams
        (the container it had, a ``dict`` or an ``argparse.Namespace``, with the value types it
        had; ``cls(hparams)`` or ``cls()`` then ``.hparams = ...``), then
        ``load_model_specific(checkpoint)``. Raises ``CheckpointError`` naming the file when it
        is unreadable, when construction fails (naming the class that saved it) or when the
        weights do not fit this class. Another class than the saved one (a subclass, the same
        class imported under another module name) is accepted when both steps succeed."""
        from . import checkpoint_io
        checkpoint = checkpoint_io.load(checkpoint_path)
        model = cls._construct(checkpoint_io.saved_hparams(checkpoint), checkpoint,
                               checkpoint_path, 'the hparams saved in the checkpoint')
        checkpoint_io.load_into_model(model, checkpoint, checkpoint_path)
        return model

    @classmethod
    def load_from_metrics(cls, weights_path, tags_csv, on_gpu=False):
        """Classic loading, on the CPU (``on_gpu=True``: then moved to the current GPU):
        hparams from the experiment folder that holds
        ``tags_csv`` (test-tube's ``meta_tags.csv``), weights from ``weights_path`` (a
        checkpoint, or a file holding ``{'state_dict': ...}``). When ``hparams.json`` (see
        ``hparams.save_hparams_file``) sits beside ``tags_csv`` the hparams come from it,
        container and value types intact; otherwise from the CSV, as an ``argparse.Namespace``
        with values parsed back to numbers/bools/None where they look like them (test-tube may
        have turned ints into floats there). Errors as in ``load_from_checkpoint``."""
        from . import checkpoint_io
        from .hparams import hparams_beside_tags
        hparams, source = hparams_beside_tags(tags_csv)
        checkpoint = checkpoint_io.load_weights(weights_path)
        model = cls._construct(hparams, checkpoint, weights_path, f'the hparams from {source}')
        checkpoint_io.load_into_model(model, checkpoint, weights_path)
        if on_gpu:
            if not torch.cuda.is_available():
                raise MisconfigurationException(
                    "load_from_metrics(..., on_gpu=True): CUDA is not available here. Pass "
                    "on_gpu=False to load on the CPU.")
            model.cuda()
        return model

    @classmethod
    def _construct(cls, hparams, checkpoint, path, source):
        """``cls(hparams)`` when ``__init__`` takes an argument, else ``cls()`` then
        ``.hparams = hparams``. Any error there becomes a ``CheckpointError`` that names the
        class ``checkpoint`` (read from ``path``) was saved from; ``source`` says where
        ``hparams`` came from."""
        from . import checkpoint_io
        from .utilities import accepts
        try:
            if hparams is not None and accepts(cls.__init__, 2):  # (self, hparams)
                return cls(hparams)
            model = cls()
            model.hparams = hparams
            return model
        except Exception as err:
            raise checkpoint_io.construction_error(cls, checkpoint, path, hparams, source,
                                                   err) from err

    # ------------------------------------------------------------------ arguments
    @staticmethod
    def add_model_specific_args(parent_parser):
        """Add this model's command-line arguments to ``parent_parser`` and return the
        parser (a test-tube ``HyperOptArgumentParser``). Default: unchanged."""
        return parent_parser

    # ------------------------------------------------------------------ hooks (no-ops)
    def on_sanity_check_start(self):
        """Before the sanity validation run that precedes training."""

    def on_epoch_start(self):
        """At the start of every training epoch."""

    def on_epoch_end(self):
        """At the end of every training epoch (after its last validation point)."""

    def tbptt_split_batch(self, batch, split_size):
        """With ``Trainer(truncated_bptt_steps=k)``: the splits of ``batch`` along time
        (dim 1), ``split_size`` steps each. Default: every tensor, in a tensor batch or a
        list/tuple of tensors, is sliced ``[:, t:t + k]``; other items go whole into every
        split; a tensor without dim 1 raises ``MisconfigurationException``. Override for
        another layout."""
        items = batch if isinstance(batch, (list, tuple)) else [batch]
        tensors = [x for x in items if isinstance(x, torch.Tensor)]
        if not tensors:
            raise MisconfigurationException(
                "tbptt_split_batch: the batch holds no tensor to split along time (dim 1). "
                "Override tbptt_split_batch(batch, split_size) for this batch type.")
        for i, x in enumerate(items):
            if isinstance(x, torch.Tensor) and x.dim() < 2:
                raise MisconfigurationException(
                    f"tbptt_split_batch: batch item {i} is a tensor of shape {tuple(x.shape)}, "
                    f"with no time dimension (dim 1) to split. Override "
                    f"tbptt_split_batch(batch, split_size) to put it whole into every split "
                    f"(e.g. one label per sequence).")
        length = tensors[0].shape[1]

        def cut(x, t):
            return x[:, t:t + split_size] if isinstance(x, torch.Tensor) else x
        if isinstance(batch, torch.Tensor):
            return [cut(batch, t) for t in range(0, length, split_size)]
        return [type(batch)(cut(x, t) for x in batch) for t in range(0, length, split_size)]

    def on_tng_metrics(self, metrics):
        """Before each training log row is written: ``metrics`` is the row (a dict of
        numbers); change it in place to change what is logged (classic hook)."""

    def on_batch_start(self, batch):
        """Before each training batch; return -1 to end the current epoch."""

    def on_batch_end(self):
        """After each training batch (after the optimizer step if one happened)."""

    def on_pre_performance_check(self):
        """Before a validation run (the model is switched to eval mode right after)."""

    def on_post_performance_check(self):
        """After a validation run (the model is back in train mode)."""

    def on_after_backward(self):
        """After ``backward()`` of each training step: gradients are populated."""

    def on_before_zero_grad(self, optimizer):
        """After ``optimizer.step()``, before ``optimizer.zero_grad()``."""

    def transfer_batch_to_device(self, batch, device):
        """Before each batch when the model is not on the CPU: return ``batch`` on ``device``.
        Default: every tensor inside lists, tuples, namedtuples, dicts and objects with a
        ``.to()`` method is moved (``non_blocking`` for pinned memory going to a GPU).
        Override for a batch type that needs more."""
        from .utilities.transfer import move_to_device
        return move_to_device(batch, device, non_blocking=device.type == 'cuda')

    def backward(self, use_amp, loss, optimizer):
        """Classic hook: the backward pass of one training step, in place of the trainer's.
        Runs once per ``training_step`` (with LBFGS, once per evaluation of the closure), with
        ``use_amp`` (``True`` under ``Trainer(use_amp=True)``), ``loss`` (what ``training_step``
        returned, divided by the accumulation window's size when it is more than 1, and
        under float16 AMP already multiplied by the loss scaler's scale: do not scale it
        again) and the ``optimizer`` this step is for. The return value is ignored. Default:
        ``loss.backward()``, which is what the trainer does when this is not overridden."""
        loss.backward()

    def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i):
        """Step the optimizer; override for warm-up, schedules per step, etc.
        The trainer calls ``on_before_zero_grad`` and ``zero_grad`` after it."""
        optimizer.step()

    # ------------------------------------------------------------------ helpers
    def choose_optimizer(self, optimizer_name, params, optimizer_kwargs=None, key='optimizer'):
        """Build an optimizer by name: adam, adamw, sgd, rmsprop, adadelta, sparse_adam."""
        return _optim.choose_optimizer(optimizer_name, params, optimizer_kwargs, key)

    def summarize(self):
        """Print and return a table of the top-level layers: name, type, parameters. A
        parameter shared by several layers counts once in the total. A lazy layer's
        parameters (``nn.LazyLinear`` before its first forward) have no size yet: its count
        reads ``<n> + uninitialized``, ``n`` counting the sized ones."""
        rows = [('', type(self).__name__, _count_params(self))]
        for name, child in self.named_children():
            rows.append((name, type(child).__name__, _count_params(child)))
        width = max(len(r[0]) for r in rows + [('(total)', '')]) + 2
        kind = max(len(r[1]) for r in rows + [('', 'type')]) + 2
        lines = [f"{'name':<{width}}{'type':<{kind}}params"]
        lines += [f"{r[0] or '(total)':<{width}}{r[1]:<{kind}}{r[2]}" for r in rows]
        text = '\n'.join(lines)
        print(text)
        return text

    def freeze(self):
        """Stop gradients for every parameter and switch to eval mode."""
        for param in self.parameters():
            param.requires_grad = False
        self.eval()

    def unfreeze(self):
        """Undo ``freeze``: gradients on, train mode."""
        for param in self.parameters():
            param.requires_grad = True
        self.train()

    def grad_norm(self, norm_type):
        """The ``norm_type``-norm of each parameter's gradient and of all of them together,
        as ``{'grad_<p>_norm_<name>': float, ..., 'grad_<p>_norm_total': float}``. A sparse
        gradient (``nn.Embedding(sparse=True)``) counts as its dense equivalent."""
        norm_type = float(norm_type)
        if norm_type <= 0:
            raise MisconfigurationException(
                f"grad_norm: norm_type must be > 0, got {norm_type}. Use 2 for the L2 norm.")
        names, per_param = [], []
        for name, param in self.named_parameters():
            if param.grad is not None:
                names.append(f'grad_{norm_type:g}_norm_{name}')
                grad = param.grad.detach()
                if grad.is_sparse:  # nn.Embedding(sparse=True): the norm of its summed rows
                    grad = grad.coalesce().values()
                per_param.append(torch.linalg.vector_norm(grad.float(), norm_type))
        names.append(f'grad_{norm_type:g}_norm_total')
        if not per_param:
            return {names[-1]: 0.0}
        per_param.append(torch.linalg.vector_norm(torch.stack(per_param), norm_type))
        # one read from the device for all of them (gradients may sit on several devices only
        # under model parallelism, which this library does not do)
        values = torch.stack([v.to(per_param[0].device) for v in per_param]).tolist()
        return {name: round(value, 4) for name, value in zip(names, values)}


def data_loader(fn):
    """Classic decorator for a dataloader method: it becomes a property that calls ``fn``
    once and returns the same loader afterwards (lazy and memoised)::

        @data_loader
        def tng_dataloader(self):
            return DataLoader(...)
    """
    attr = f'_lazy_{fn.__name__}'

    def loader(self):
        if attr not in self.__dict__:
            self.__dict__[attr] = fn(self)
        return self.__dict__[attr]
    loader.__name__, loader.__doc__ = fn.__name__, fn.__doc__
    return property(loader)

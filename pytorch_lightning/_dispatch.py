"""The one place hooks are looked up: once per fit, never per step.

For every hook the loop gets a list of ready-to-call callables holding only the module hooks
and callback hooks that are really overridden, adapted to the arity the user chose
(seed-style ``on_batch_start()`` or classic ``on_batch_start(batch)``).
"""
import functools
import inspect

from .callbacks.base import CALLBACK_HOOKS, Callback
from .exceptions import MisconfigurationException
from .module import HOOKS as MODULE_HOOKS
from .module import RootModule
from .utilities import accepts, assigned_on_instance, is_overridden, positional_arity

#: positional arguments the trainer passes to each module hook (classic form)
MODULE_HOOK_ARGS = {
    'on_batch_start': ('batch',), 'on_before_zero_grad': ('optimizer',),
    'optimizer_step': ('epoch_nb', 'batch_nb', 'optimizer', 'optimizer_i'),
    'backward': ('use_amp', 'loss', 'optimizer'),
}
#: hooks that need their arguments (no seed-style form without any)
NO_SEED_FORM = ('optimizer_step', 'backward')

STEP_ARGS = {
    'training_step': ('data_batch', 'batch_nb', 'optimizer_i'),
    'validation_step': ('data_batch', 'batch_nb', 'dataloader_i'),
    'test_step': ('data_batch', 'batch_nb', 'dataloader_i'),
}


def _drop_args(fn):
    def call(*_):
        return fn()
    return call


def adapt_module_hook(module, name):
    """The module's override of hook ``name`` as a callable taking the classic arguments,
    or ``None`` when the module keeps the no-op default. An override is a method of the
    module's class or a callable assigned on the instance (``model.on_epoch_start = fn``,
    which takes no ``self``). Every hook but ``optimizer_step`` and ``backward`` may also take
    no arguments (seed style)."""
    if not is_overridden(module, name, RootModule):
        return None
    fn = getattr(module, name)
    expected = MODULE_HOOK_ARGS.get(name, ())
    if accepts(fn, len(expected)):
        return fn
    seed_style = name not in NO_SEED_FORM
    if seed_style and accepts(fn, 0):
        return _drop_args(fn)
    required, _ = positional_arity(fn)
    if assigned_on_instance(module, name):
        where, self_arg = f"{name} assigned on the {type(module).__name__} instance", ()
    else:
        where, self_arg = f"{type(module).__name__}.{name}", ('self',)
    besides = ' besides self' if self_arg else ''
    wanted = ', '.join(self_arg + expected)
    no_args = ', '.join(self_arg)
    raise MisconfigurationException(
        f"{where} requires {required} positional argument(s){besides}, but the trainer passes "
        f"{len(expected)}. Define it as `def {name}({wanted})`"
        + (f" or `def {name}({no_args})`." if expected and seed_style else "."))


def step_arity(module, name, count=1, loader_name=None):
    """How many positional arguments to pass ``module.<name>``: 1 ``(batch)``, 2 ``(batch,
    batch_nb)`` or 3 ``(batch, batch_nb, optimizer_i)`` for ``training_step``, ``(batch,
    batch_nb, dataloader_i)`` for ``validation_step``/``test_step``, whatever arity the user
    wrote; ``None`` when the module has no such method. ``count`` is the number of optimizers
    (``training_step``) or of loaders (the others, read from ``loader_name``): with more than
    one the third argument is required. With one, the shortest form the method takes is used
    (a step that requires the third gets 0). (A count, not a wrapper, so that the device
    part can call the method on replicas of the module.)"""
    fn = getattr(module, name, None)
    if fn is None:
        return None
    if count > 1:
        if accepts(fn, 3):
            return 3
        third = STEP_ARGS[name][2]
        if name == 'training_step':
            raise MisconfigurationException(
                f"configure_optimizers returned {count} optimizers, but training_step "
                f"cannot take a third argument. Define `def training_step(self, data_batch, "
                f"batch_nb, optimizer_i)` and return the loss for optimizer number optimizer_i.")
        raise MisconfigurationException(
            f"{loader_name} returned {count} loaders, but {type(module).__name__}.{name} "
            f"cannot take a third argument, the loader's index. Define `def {name}(self, "
            f"data_batch, batch_nb, {third})` ({third} is 0 for the first loader), or return "
            f"one loader from {loader_name}.")
    for nb_args in (2, 1, 3):
        if accepts(fn, nb_args):
            return nb_args
    problem = ('takes no batch argument' if accepts(fn, 0) else
               'requires more arguments than the trainer passes')
    raise MisconfigurationException(
        f"{type(module).__name__}.{name} {problem}. Define it as "
        f"`def {name}(self, {', '.join(STEP_ARGS[name])})` (trailing arguments optional).")


def backward_runner(module, precision):
    """What the loop runs backward with, as ``backward(loss, optimizer)`` (``loss`` divided by
    the accumulation window): the precision part's ``backward``, or, when the module
    overrides the classic ``backward(use_amp, loss, optimizer)`` hook, that override given
    ``precision.scale(loss)`` (under float16 the scaled loss, so ``unscale`` stays right)."""
    override = adapt_module_hook(module, 'backward')
    if override is None:
        def backward(loss, optimizer):
            precision.backward(loss)
        return backward
    use_amp = precision.dtype is not None

    def module_backward(loss, optimizer):
        override(use_amp, precision.scale(loss), optimizer)
    return module_backward


class HookDispatcher:
    """Per-fit table of hook callables: ``hooks[name]`` is a list, module first, then the
    callbacks in the order given. ``module_on_batch_start`` is kept apart because its
    return value (-1 ends the epoch) matters; ``backward(loss, optimizer)`` runs a training
    step's backward (see ``backward_runner``)."""

    def __init__(self, trainer, module, callbacks):
        self.hooks = {name: [] for name in set(MODULE_HOOKS) | set(CALLBACK_HOOKS)}
        self.module_on_batch_start = adapt_module_hook(module, 'on_batch_start')
        for name in MODULE_HOOKS:
            if name == 'on_batch_start':
                continue
            fn = adapt_module_hook(module, name)
            if fn is not None:
                self.hooks[name].append(fn)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise MisconfigurationException(
                    f"callbacks must hold pytorch_lightning.callbacks.Callback instances, got "
                    f"{type(cb).__name__}. Subclass Callback and override the hooks you need.")
            for name in CALLBACK_HOOKS:
                if is_overridden(cb, name, Callback) and name not in cb.skip_hooks:
                    self.hooks[name].append(functools.partial(getattr(cb, name), trainer, module))
        self.module_optimizer_step = adapt_module_hook(module, 'optimizer_step')
        self.backward = backward_runner(module, trainer.precision)
        self.optimizer_step_takes_closure = (
            self.module_optimizer_step is not None
            and 'second_order_closure' in inspect.signature(self.module_optimizer_step).parameters)

    def call(self, name, *args):
        for fn in self.hooks[name]:
            fn(*args)

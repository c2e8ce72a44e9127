"""The one place hooks are looked up: once per fit, never per step.

For every hook the loop gets a list of ready-to-call callables holding only the module hooks
and callback hooks that are really overridden, adapted to the arity the user chose
(seed-style ``on_batch_start()`` or classic ``on_batch_start(batch)``).
"""
import functools

from .callbacks.base import CALLBACK_HOOKS, Callback
from .exceptions import MisconfigurationException
from .module import HOOKS as MODULE_HOOKS
from .module import RootModule
from .utilities import is_overridden, positional_arity

#: positional arguments the trainer passes to each module hook (classic form)
MODULE_HOOK_ARGS = {'on_batch_start': ('batch',), 'on_before_zero_grad': ('optimizer',)}

STEP_ARGS = {
    'training_step': ('data_batch', 'batch_nb', 'optimizer_i'),
    'validation_step': ('data_batch', 'batch_nb'),
    'test_step': ('data_batch', 'batch_nb'),
}


def _drop_args(fn):
    def call(*_):
        return fn()
    return call


def adapt_module_hook(module, name):
    """The module's override of hook ``name`` as a callable taking the classic arguments,
    or ``None`` when the module keeps the no-op default."""
    if not is_overridden(module, name, RootModule):
        return None
    fn = getattr(module, name)
    expected = MODULE_HOOK_ARGS.get(name, ())
    arity = positional_arity(fn)
    if arity is None or arity == len(expected):
        return fn
    if arity == 0:
        return _drop_args(fn)
    wanted = ', '.join(('self',) + expected)
    raise MisconfigurationException(
        f"{type(module).__name__}.{name} takes {arity} positional argument(s) besides self, "
        f"but the trainer passes {len(expected)}. Define it as `def {name}({wanted})`"
        + (f" or `def {name}(self)`." if expected else "."))


def adapt_step(module, name, nb_optimizers=1):
    """``module.<name>`` as a callable ``(batch, batch_nb, optimizer_i)`` whatever arity the
    user wrote; ``None`` when the module has no such method."""
    fn = getattr(module, name, None)
    if fn is None:
        return None
    arity = positional_arity(fn)
    allowed = STEP_ARGS[name]
    if arity is None or arity >= 3:
        return fn if name == 'training_step' else (lambda b, i, o=0: fn(b, i))
    if arity == 2:
        if nb_optimizers > 1 and name == 'training_step':
            raise MisconfigurationException(
                f"configure_optimizers returned {nb_optimizers} optimizers, but "
                f"training_step takes (data_batch, batch_nb) only. Add a third argument: "
                f"`def training_step(self, data_batch, batch_nb, optimizer_i)` and return the "
                f"loss for optimizer number optimizer_i.")
        return lambda b, i, o=0: fn(b, i)
    if arity == 1:
        if nb_optimizers > 1 and name == 'training_step':
            raise MisconfigurationException(
                f"configure_optimizers returned {nb_optimizers} optimizers, but training_step "
                f"takes (data_batch) only. Use `def training_step(self, data_batch, batch_nb, "
                f"optimizer_i)`.")
        return lambda b, i, o=0: fn(b)
    raise MisconfigurationException(
        f"{type(module).__name__}.{name} takes no batch argument. Define it as "
        f"`def {name}(self, {', '.join(allowed)})` (trailing arguments optional).")


class HookDispatcher:
    """Per-fit table of hook callables: ``hooks[name]`` is a list, module first, then the
    callbacks in the order given. ``module_on_batch_start`` is kept apart because its
    return value (-1 ends the epoch) matters."""

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
        self.module_optimizer_step = (module.optimizer_step
                                      if is_overridden(module, 'optimizer_step', RootModule) else None)

    def call(self, name, *args):
        for fn in self.hooks[name]:
            fn(*args)

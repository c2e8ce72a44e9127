"""The ``Callback`` base class: the module's hooks plus a few trainer-level ones."""

#: Every hook a callback can implement. Each receives ``(trainer, module)`` first, then the
#: arguments named in docs/callbacks.md.
CALLBACK_HOOKS = (
    'on_fit_setup', 'on_fit_start', 'on_sanity_check_start', 'on_epoch_start', 'on_batch_start',
    'on_after_backward', 'on_before_optimizer_step', 'on_before_zero_grad', 'on_batch_end',
    'on_pre_performance_check',
    'on_validation_batch_end', 'on_validation_end', 'on_post_performance_check',
    'on_epoch_end', 'on_save_point', 'on_test_end', 'on_fit_end', 'on_exception',
)


class Callback:
    """Subclass and override any hook; the trainer calls only the hooks you override.

    A callback stops training by setting ``trainer.state.should_stop = True``.
    ``skip_hooks`` lets an instance opt out of hooks its class defines (decided once per fit).
    """

    skip_hooks = frozenset()

    @property
    def state_key(self):
        """Key of this callback's state inside checkpoints (class name by default)."""
        return type(self).__qualname__

    def on_fit_setup(self, trainer, module):
        """At the start of every ``fit``, after the module's optimizers and loaders are read
        and before a checkpoint is restored: reset what a previous fit left (each fit is a
        new run; a resumed one gets its state back from ``load_state_dict`` right after)."""

    def on_fit_start(self, trainer, module):
        """Once per fit, after setup and any restore, before the sanity check."""

    def on_sanity_check_start(self, trainer, module):
        """Before the sanity validation run."""

    def on_epoch_start(self, trainer, module):
        """At the start of each training epoch."""

    def on_batch_start(self, trainer, module, batch):
        """Before each training batch (its return value is ignored)."""

    def on_after_backward(self, trainer, module):
        """After each ``backward()``; gradients are populated."""

    def on_before_optimizer_step(self, trainer, module, optimizer, optimizer_i):
        """When an accumulation window is complete, before clipping and the optimizer step:
        the gradients are the window's full sum, unscaled (true values under float16 AMP).
        Read gradients here, not in ``on_after_backward``."""

    def on_before_zero_grad(self, trainer, module, optimizer):
        """After each optimizer step, before ``zero_grad``."""

    def on_batch_end(self, trainer, module):
        """After each training batch. ``trainer.last_loss``, ``trainer.last_prog`` and
        ``trainer.last_log`` hold what ``training_step`` returned (tensors, unsynced)."""

    def on_pre_performance_check(self, trainer, module):
        """Before a validation run."""

    def on_validation_batch_end(self, trainer, module):
        """After each validation batch (also during the sanity check)."""

    def on_validation_end(self, trainer, module, metrics):
        """After ``validation_end`` returned ``metrics`` (not called for the sanity check)."""

    def on_post_performance_check(self, trainer, module):
        """After a validation run."""

    def on_epoch_end(self, trainer, module):
        """At the end of each training epoch."""

    def on_save_point(self, trainer, module):
        """At a point the loop can resume from exactly: after each training batch is wholly
        done (its hooks, any validation point) and after each epoch is wholly done (after
        ``on_epoch_end`` and the LR schedulers). Write checkpoints here, not earlier, so
        every other part's state is final."""

    def on_test_end(self, trainer, module, metrics):
        """After ``test_end`` returned ``metrics``."""

    def on_fit_end(self, trainer, module):
        """Once, when ``fit`` finishes (also when it stops early)."""

    def on_exception(self, trainer, module, error):
        """Instead of ``on_fit_end`` when ``fit`` ends with an exception (a failing step,
        ``KeyboardInterrupt``, a SLURM preemption): release what ``on_fit_start`` took. The
        error propagates after every callback's ``on_exception`` has run; an error raised
        here is attached to it as a note, never hiding it."""

    def state_dict(self):
        """What this callback needs to resume exactly (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned."""

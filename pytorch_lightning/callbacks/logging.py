"""Metric rows and periodic saves to the experiment logger, as a callback.

It talks to the logger only through ``log_hyperparams``, ``log_metrics``, ``save`` and
``finalize`` (duck-typed: this file imports no logger)."""
import math

from ..utilities import numbers_only
from .base import Callback


def lr_names(optimizers):
    """``{(optimizer_i, group_j): column}`` for the learning rates a training row carries:
    ``lr-<OptimizerClass>``, with ``-<i>`` when several optimizers share the class and
    ``/pg<j>`` for each parameter group after the first."""
    classes = [type(opt).__name__ for opt in optimizers]
    names = {}
    for i, (opt, cls) in enumerate(zip(optimizers, classes)):
        base = f'lr-{cls}' + (f'-{i}' if classes.count(cls) > 1 else '')
        for j in range(len(opt.param_groups)):
            names[(i, j)] = base if j == 0 else f'{base}/pg{j}'
    return names


class MetricsLogging(Callback):
    """A metrics row every ``row_interval`` training batches, after each validation and after
    ``test()``; ``logger.save()`` every ``save_interval`` batches; ``logger.finalize()`` when
    fit ends. Every row carries ``epoch`` and ``global_step`` (optimizer steps); its step,
    passed as ``log_metrics(row, step)``, is the number of training batches seen
    (``state.total_batches``), so a resume can hide exactly the rows logged after the
    checkpoint. With ``grad_norm_type > 0`` each training row also carries the gradient norms."""

    def __init__(self, logger, row_interval=10, save_interval=100, grad_norm_type=-1):
        self.logger = logger
        self.row_interval = max(1, int(row_interval))
        self.save_interval = max(1, int(save_interval))
        self.grad_norm_type = grad_norm_type
        self._until_row = self.row_interval
        self._until_save = self.save_interval
        self._grad_norms = {}
        self._lr_names = {}
        self._own_names = None  # several optimizers: each one's parameter names
        if grad_norm_type <= 0:
            self.skip_hooks = frozenset({'on_before_optimizer_step', 'on_epoch_end'})

    def on_fit_start(self, trainer, module):
        self.logger.log_hyperparams(getattr(module, 'hparams', None))
        self._lr_names = lr_names(trainer.optimizers)
        self._own_names = None
        if self.grad_norm_type > 0 and len(trainer.optimizers) > 1:
            ids = [{id(p) for p in params} for params in trainer.param_groups]
            self._own_names = [{name for name, p in module.named_parameters() if id(p) in own}
                               for own in ids]

    def _log(self, trainer, row):
        state = trainer.state
        row['epoch'] = state.epoch
        row['global_step'] = state.global_step
        self.logger.log_metrics(row, state.total_batches)

    def on_before_optimizer_step(self, trainer, module, optimizer, optimizer_i):
        if self._until_row == 1:  # a row is written after this batch: true, whole-window grads
            norms = module.grad_norm(self.grad_norm_type)
            if self._own_names is not None:
                norms = self._with_earlier_optimizers(norms, optimizer_i)
            self._grad_norms = norms

    def _with_earlier_optimizers(self, norms, optimizer_i):
        """Several optimizers: when optimizer ``optimizer_i`` steps, only its parameters'
        gradients are its true window sum (an earlier one's were zeroed after its step; a
        later one's may be a partial, scaled sum). Its norms join those of the batch's
        earlier optimizers, and the total is recomputed over all of them."""
        total_key = next(key for key in norms if key.endswith('_norm_total'))
        prefix = total_key[:-len('total')]
        merged = {key: value for key, value in self._grad_norms.items() if key != total_key}
        merged.update((prefix + name, norms[prefix + name])
                      for name in self._own_names[optimizer_i] if prefix + name in norms)
        order = float(self.grad_norm_type)
        values = list(merged.values())
        total = (max(values, default=0.0) if math.isinf(order)
                 else sum(value ** order for value in values) ** (1 / order))
        merged[total_key] = round(total, 4)
        return merged

    def on_epoch_end(self, trainer, module):
        # the step of a window left open at the epoch end came after its batch's row: its
        # norms belong to no row (the next epoch's first row may close no window)
        self._grad_norms = {}

    def on_batch_end(self, trainer, module):
        self._until_row -= 1
        if self._until_row == 0:
            self._until_row = self.row_interval
            # one read from the device: the log dict, the loss and the NaN flag together
            row = trainer.read_numbers({**trainer.last_log, 'loss': trainer.last_loss})
            for (opt_i, group_j), name in self._lr_names.items():
                row[name] = trainer.optimizers[opt_i].param_groups[group_j]['lr']
            on_tng_metrics = getattr(module, 'on_tng_metrics', None)
            if on_tng_metrics is not None:
                on_tng_metrics(row)  # the classic hook: may change the row in place
            if self._grad_norms:
                row.update(self._grad_norms)
                self._grad_norms = {}
            self._log(trainer, row)
        self._until_save -= 1
        if self._until_save == 0:
            self._until_save = self.save_interval
            getattr(self.logger, 'request_save', self.logger.save)()  # test-tube: async

    def on_validation_end(self, trainer, module, metrics):
        self._log(trainer, numbers_only(metrics))

    def on_test_end(self, trainer, module, metrics):
        self._log(trainer, numbers_only(metrics))
        self.logger.save()

    def on_fit_end(self, trainer, module):
        self.logger.finalize('finished')

    def on_exception(self, trainer, module, error):
        # every row logged before the error is saved; Ctrl-C, SIGTERM and a SLURM preemption
        # arrive as BaseExceptions that are not Exceptions: interruptions, not failures
        self.logger.finalize('failed' if isinstance(error, Exception) else 'interrupted')

    def state_dict(self):
        return {'until_row': self._until_row, 'until_save': self._until_save}

    def load_state_dict(self, state):
        self._until_row = state.get('until_row', self.row_interval)
        self._until_save = state.get('until_save', self.save_interval)

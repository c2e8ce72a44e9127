"""Validation and testing: the part of the ``Trainer`` that runs the evaluation loops (the
sanity check, validation points, ``test()``). A mixin, so the training loop in ``trainer.py``
stays short; it works on the trainer's own state (``self``) and never imports ``trainer.py``.
"""
import itertools
import os

import torch

from . import checkpoint_io
from . import validation as checks
from ._dispatch import step_arity
from .data import find_loader_attr, get_loaders, shard_loader, workers_stopped_on_error
from .exceptions import MisconfigurationException
from .utilities import StepOutputs, batch_size_of
from .utilities.transfer import move_to_device


class EvaluationMixin:
    """``test()`` and the evaluation passes ``Trainer.fit`` runs."""

    def _sanity_check(self):
        steps = self.nb_sanity_val_steps
        if not self._val_loaders or steps == 0 or self.nb_val_batches == 0:
            return
        self.state.stage = 'sanity_check'
        self._hooks.call('on_sanity_check_start')
        limits = [steps if limit is None else min(steps, limit) for limit in self._val_limits]
        self._evaluate('validation', self._val_loaders, limits, self._val_step,
                       self._val_sharded)

    def _validate(self):
        stage = self.state.stage
        self.state.stage = 'validate'
        self._evaluate('validation', self._val_loaders, self._val_limits, self._val_step,
                       self._val_sharded)
        self.state.stage = stage

    def _eval_loaders(self, model, stage):
        """``(loaders, sharded)``: the module's ``stage`` loaders (``'val'``, ``'test'``); with
        several processes each plain DataLoader becomes this rank's disjoint shard of it
        (``sharded[i]``), whose step outputs ``_evaluate`` gathers from every rank."""
        loaders, world = get_loaders(model, stage), self.world
        if world.world_size == 1:
            return loaders, [False] * len(loaders)
        name = find_loader_attr(model, stage)
        pairs = [shard_loader(loader, world.rank, world.world_size, name) for loader in loaders]
        return [loader for loader, _ in pairs], [sharded for _, sharded in pairs]

    def _evaluate(self, kind, loaders, limits, arity, sharded):
        """One pass over each of ``loaders`` (``limits[i]`` batches of loader i, ``None``: all)
        with ``{kind}_step`` (taking ``arity`` arguments: ``batch[, batch_idx[,
        dataloader_i]]``); returns ``{kind}_end``'s metrics dict. ``{kind}_end`` gets the flat
        list of step outputs with one loader, one such list per loader with several. The
        outputs of a ``sharded`` loader are gathered from every rank first (in rank order, on
        the CPU), so every rank computes the same metrics from every sample, once."""
        hooks, module, state = self._hooks, self.module, self.state
        sanity = state.stage == 'sanity_check'
        testing = kind == 'test'
        if not testing:
            hooks.call('on_pre_performance_check')
        modes = [(sub, sub.training) for sub in module.modules()]  # e.g. a frozen BatchNorm
        module.eval()
        end_name = f'{kind}_end'
        try:
            with torch.no_grad():
                per_loader = [self._evaluate_loader(testing, loader, limit, arity, loader_i)
                              for loader_i, (loader, limit) in enumerate(zip(loaders, limits))]
                if any(sharded):
                    per_loader = self._gather_outputs(per_loader, sharded)
                metrics = getattr(module, end_name)(
                    per_loader if len(loaders) > 1 else per_loader[0])
        finally:  # also after Ctrl-C or an error: the model goes on being used (a notebook)
            _restore_modes(module, modes)
        checks.check_eval_end_output(end_name, metrics)
        for key in ('progress_bar', 'log'):  # 0.5.x nested dicts: their metrics count too
            if isinstance(metrics.get(key), dict):
                metrics = {**{k: v for k, v in metrics.items() if k != key}, **metrics[key]}
        if testing:
            self._test_metrics = metrics
            hooks.call('on_test_end', metrics)
        else:
            if not sanity:
                self.val_metrics = metrics
                hooks.call('on_validation_end', metrics)
            else:  # a monitor's key missing or not a number: say so before training
                checks.check_monitored_metrics(self._active_callbacks, metrics)
            hooks.call('on_post_performance_check')
        return metrics

    def _gather_outputs(self, per_loader, sharded):
        """Each sharded loader's step outputs (and batch sizes) from every rank, joined in
        rank order: one object all-gather (shards may differ in length)."""
        cpu = torch.device('cpu')
        mine = [move_to_device((list(outputs), outputs.batch_sizes), cpu) if shard else None
                for outputs, shard in zip(per_loader, sharded)]
        everyone = self.world.gather_objects(mine)
        joined = []
        for i, outputs in enumerate(per_loader):
            if sharded[i]:
                outputs = StepOutputs()
                for rank_outputs in everyone:
                    outputs.extend(rank_outputs[i][0])
                    outputs.batch_sizes.extend(rank_outputs[i][1])
            joined.append(outputs)
        return joined

    def _evaluate_loader(self, testing, loader, limit, arity, loader_i):
        """The step outputs of ``limit`` batches of ``loader`` (number ``loader_i``), with their
        batch sizes, which let the default ``*_end`` weight each batch's mean."""
        device, module = self.device, self.module
        transfer, autocast = device.transfers_batches, self.precision.autocast
        step_name = 'test_step' if testing else 'validation_step'
        batch_end = self._hooks.hooks['on_validation_batch_end'] if not testing else ()
        loss_key = 'test_loss' if testing else 'val_loss'
        outputs = StepOutputs()
        iterator = _iterator_keeping_rng(loader)
        batches = iterator if limit is None else itertools.islice(iterator, limit)
        with workers_stopped_on_error(iterator, loader):
            for batch_idx, batch in enumerate(batches):
                if transfer:
                    batch = device.to_device(module, batch)
                out = device.run_step(module, step_name, batch, (batch_idx, loader_i)[:arity - 1],
                                      autocast)
                if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
                    loss, out = out[0], dict(out[1])
                    out.setdefault(loss_key, loss)
                outputs.append(out)
                size = batch_size_of(batch)
                outputs.batch_sizes.append(1 if size is None else size)
                for fn in batch_end:
                    fn()
        return outputs

    def test(self, model=None, ckpt_path=None):
        """Run ``test_step`` over ``test_dataloader`` (test_percent_check of it) and return
        the dict ``test_end`` returned. ``model`` defaults to the one last fitted.
        ``ckpt_path``: ``None`` tests the current weights; ``'best'`` first loads the best
        checkpoint of the last fit (``checkpoint_callback.best_path``); a path loads that
        checkpoint's weights (``load_model_specific``) into the model first."""
        if model is None:
            model = self.module
            if model is None:
                raise MisconfigurationException(
                    "test() was called without a model and before fit(). Pass the model: "
                    "trainer.test(model).")
        checks.check_test_contract(model)
        if ckpt_path is not None:
            self._load_weights_for_test(model, ckpt_path)
        if model is not self.module or self._hooks is None:
            self._attach(model)
        loaders, sharded = self._eval_loaders(model, 'test')
        arity = step_arity(model, 'test_step', len(loaders), 'test_dataloader')
        limits = [self._batch_limit(loader, self.test_percent_check, 'test_percent_check')
                  for loader in loaders]
        self.nb_test_batches = _total(limits)
        stage = self.state.stage
        self.state.stage = 'test'
        try:
            metrics = self._evaluate('test', loaders, limits, arity, sharded)
        finally:
            self.state.stage = stage
            if self.logger is not None:
                self.logger.finalize(None)  # the fit's status stays as recorded
        return metrics

    def _load_weights_for_test(self, model, ckpt_path):
        if ckpt_path == 'best':
            best = getattr(self.checkpoint_callback, 'best_path', None)
            if not best or not os.path.isfile(best):
                raise MisconfigurationException(
                    f"test(ckpt_path='best'): the last fit kept no best checkpoint "
                    f"(checkpoint_callback.best_path is {best!r}; it needs a validation metric "
                    f"to monitor, e.g. 'val_loss'). Pass a checkpoint path, or ckpt_path=None "
                    f"to test the current weights.")
            ckpt_path = best
        if not os.path.isfile(ckpt_path):
            raise MisconfigurationException(
                f"test(ckpt_path={os.fspath(ckpt_path)!r}): no such file. Pass 'best', a "
                f"checkpoint path, or None for the current weights.")
        checkpoint_io.load_into_model(model, checkpoint_io.load(ckpt_path), ckpt_path)
        print(f'testing the weights of {os.fspath(ckpt_path)}')


def _iterator_keeping_rng(loader):
    """``iter(loader)`` with the global torch RNG left as it was. A new DataLoader iterator
    draws its workers' base seed from it, and one with persistent workers only the first
    time: a resumed run, whose first validation builds that iterator again, would draw where
    the uninterrupted run did not, and train on other random numbers (dropout) from there."""
    state = torch.get_rng_state()
    try:
        return iter(loader)
    finally:
        torch.set_rng_state(state)


def _restore_modes(module, modes):
    """Put ``module`` and each of its submodules back in the train/eval mode it had
    (``modes``: ``(submodule, training)`` pairs in ``module.modules()`` order). The module's
    own ``train()`` runs first, so an override of it still runs; a submodule the user kept
    in eval mode in a training model (a frozen BatchNorm) is then put back in eval mode."""
    module.train(modes[0][1])
    for sub, training in modes[1:]:
        sub.training = training


def _total(limits):
    """The batches of several loaders together: ``None`` (unknown) if any loader's is."""
    return None if None in limits else sum(limits)

"""The training loop, and nothing else."""
import collections
import functools
import itertools
import math
import numbers
import os
import sys
import warnings
from collections.abc import Mapping

import torch

from . import checkpoint_io
from . import validation as checks
from ._checkpointing import CheckpointingMixin, _Preempted
from ._dispatch import HookDispatcher, step_arity
from ._distributed import DistributedMixin
from ._evaluation import EvaluationMixin, _total
from .callbacks._monitor import notice
from .callbacks.early_stopping import EarlyStopping
from .callbacks.logging import MetricsLogging
from .callbacks.model_checkpoint import ModelCheckpoint
from .callbacks.progress import ProgressBar
from .data import (distributed_loader, find_loader_attr, get_loader, limited_batches,
                   loader_length, make_resumable, release_workers, workers_stopped_on_error)
from .exceptions import MisconfigurationException, NonFiniteLossError
from .hparams import hparams_to_dict
from .optim import normalize_optimizers
from .placement import DataParallelDevice, SingleProcess, make_device, make_precision
from .state import TrainerState
from .utilities import numbers_only, to_number
from .utilities.parent import watch_sweep_parent
from .utilities.slurm import Terminated, TerminationGuard, slurm_job_id
from .utilities.transfer import rebuild_mapping, rebuild_sequence

_EMPTY = {}
_FLAG = object()  # the key of the NaN flag among the numbers read together
_FOLD_LOSSES = 64  # unchecked device losses kept before they are summed into one


class Trainer(CheckpointingMixin, EvaluationMixin, DistributedMixin):
    """Runs a ``RootModule``: ``Trainer(...).fit(model)``, then optionally ``test()``.

    The loop, in order (``hook`` = the module's hook, then each callback's)::

        fit(model):
            a second fit on this Trainer is a new run (a new log version by default)
            distributed_backend='ddp': join the world torchrun/srun started, or start the
                ranks, run this fit in each of them and adopt rank 0's result (return here)
            check arguments and the module's contract         # MisconfigurationException
            configure_optimizers(); read the dataloaders once
            callbacks.on_fit_setup                            # reset per run
            restore a checkpoint if asked; check the output folders are writable
            model.summarize() if print_weights_summary; callbacks.on_fit_start
            if val data and nb_sanity_val_steps:              # sanity check, metrics discarded
                on_sanity_check_start
                on_pre_performance_check; eval mode, no_grad
                validation_step x nb_sanity_val_steps (of each val loader); validation_end;
                train mode
                on_post_performance_check
            for epoch in range(max_nb_epochs):
                on_epoch_start
                for batch_nb, batch in tng_dataloader (train_percent_check of it):
                    (on an accelerator: batch = transfer_batch_to_device(batch, device))
                    if on_batch_start(batch) == -1: end the epoch
                    for optimizer_i, optimizer in optimizers:
                        closure():                            # run by the optimizer's step
                            loss = training_step(batch, batch_nb[, optimizer_i])  # autocast
                            NaN/inf check (CPU: now; accelerators: a flag read every
                                add_log_row_interval batches and before each checkpoint)
                            backward(loss / accumulation window size)   # scaled (float16);
                                the module's backward(use_amp, loss, optimizer) if overridden
                            on_after_backward
                            if the accumulation window is complete:
                                unscale; callbacks.on_before_optimizer_step; clip gradients
                        if the window is complete:
                            optimizer.step(closure) through the precision part (or the
                                module's optimizer_step override, after closure())
                            on_before_zero_grad(optimizer); optimizer.zero_grad()
                        else: closure()
                    on_batch_end                              # progress bar, log rows, saves
                    if a validation point (val_check_interval, check_val_every_n_epoch):
                        on_pre_performance_check; eval mode, no_grad
                        validation_step per batch of each val loader (+ dataloader_i with
                            several); metrics = validation_end(outputs: a list per loader
                            with several loaders)
                        train mode; callbacks.on_validation_end(metrics)
                        on_post_performance_check
                    callbacks.on_save_point                   # checkpoints are written here
                    decision point (every batch; under DDP every add_log_row_interval batches,
                            after a validation point and at epoch end, agreed by all ranks):
                        if SIGUSR1 arrived (SLURM): write hpc_ckpt_<n>.ckpt (on_hpc_save),
                            requeue, exit(0)
                        if state.should_stop and epoch >= min_nb_epochs: end the epoch
                step an unfinished accumulation window
                on_epoch_end
                lr_schedulers.step()
                callbacks.on_save_point
                decision point; if state.should_stop and epoch + 1 >= min_nb_epochs: stop
            wait for pending checkpoint writes                # a failed one fails fit
            callbacks.on_fit_end                              # final log save
        on an exception: callbacks.on_exception(error); on Ctrl-C print the newest
        checkpoint and the argument that resumes from it; re-raise (SLURM preemption:
        exit status 0; SIGTERM: the process then dies of the signal)

    Resuming (``resume_from_checkpoint``, or the newest ``hpc_ckpt_<n>.ckpt`` found at start)
    restores every part after ``configure_optimizers``, runs the sanity check, then continues
    at the saved position: a mid-epoch resume calls ``on_epoch_start`` again, redraws the
    epoch's shuffle from the saved RNG state, skips the batches already done by index only,
    and restores the RNG state of the save point before the next batch is loaded.

    ``docs/trainer.md`` describes every argument; ``tests/test_hook_order.py`` pins this order.
    """

    def __init__(self, experiment=None, default_save_path=None, max_nb_epochs=1000,
                 min_nb_epochs=1, val_check_interval=1.0, check_val_every_n_epoch=1,
                 train_percent_check=1.0, val_percent_check=1.0, test_percent_check=1.0,
                 overfit_pct=0.0, fast_dev_run=False, nb_sanity_val_steps=5,
                 accumulate_grad_batches=1, gradient_clip=0, track_grad_norm=-1,
                 print_nan_grads=False, progress_bar=True, process_position=0,
                 log_save_interval=100, add_log_row_interval=10, print_weights_summary=True,
                 callbacks=None, checkpoint_callback=None, early_stop_callback=None,
                 resume_from_checkpoint=None, gpus=None, distributed_backend=None,
                 use_amp=False, amp_dtype=None, amp_level=None, logger=None,
                 truncated_bptt_steps=None, nb_gpu_nodes=1, num_processes=1,
                 process_group_timeout=600, find_unused_parameters=None):
        args = dict(locals())
        watch_sweep_parent()  # a sweep's trial ends with its sweep, even a killed one
        del args['self']
        checks.check_trainer_args(args)
        self._init_args = args  # what a spawned process builds its trainer from
        self.default_save_path = os.path.expanduser(os.fspath(default_save_path or os.getcwd()))
        self.max_nb_epochs, self.min_nb_epochs = max_nb_epochs, min_nb_epochs
        if isinstance(val_check_interval, numbers.Integral):
            val_check_interval = int(val_check_interval)  # numpy ints count batches too
        self.val_check_interval = 1.0 if fast_dev_run else val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch
        if overfit_pct > 0:
            train_percent_check = val_percent_check = test_percent_check = overfit_pct
        self.train_percent_check = train_percent_check
        self.val_percent_check = val_percent_check
        self.test_percent_check = test_percent_check
        self.overfit_pct = overfit_pct
        self.fast_dev_run = fast_dev_run
        self.nb_sanity_val_steps = nb_sanity_val_steps
        if fast_dev_run:  # one batch of everything, one epoch
            self.max_nb_epochs = self.min_nb_epochs = 1
            self.nb_sanity_val_steps = 0
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip = gradient_clip
        self.track_grad_norm = track_grad_norm
        self.print_nan_grads = print_nan_grads
        self.progress_bar = progress_bar
        self.process_position = process_position
        self.log_save_interval = log_save_interval
        self.add_log_row_interval = add_log_row_interval
        self.print_weights_summary = print_weights_summary
        self.user_callbacks = list(callbacks or [])
        self.resume_from_checkpoint = resume_from_checkpoint
        self.truncated_bptt_steps = truncated_bptt_steps
        self._hiddens = self._next_hiddens = None

        self._experiment_arg = experiment if logger is None else logger
        self._fits = 0
        self.logger = logger if logger is not None else self._build_logger(experiment)
        self._logs_in_save_path = experiment is None  # the default logger writes there
        self.checkpoint_callback = checkpoint_callback
        if checkpoint_callback is None:
            self.checkpoint_callback = ModelCheckpoint(filepath=None)
            self.checkpoint_callback.monitor.required = False
        self.early_stop_callback = early_stop_callback
        if early_stop_callback is None:
            self.early_stop_callback = EarlyStopping(patience=3)
            self.early_stop_callback.monitor.required = False
        self.state = TrainerState()
        self.device = make_device(gpus, distributed_backend,
                                  find_unused_parameters=find_unused_parameters)
        self.precision = self._new_precision()
        self.world = SingleProcess()  # a DistributedWorld once fit joins one
        self._distributed = distributed_backend in ('ddp', 'ddp_spawn')
        self.nb_gpu_nodes, self.num_processes = nb_gpu_nodes, num_processes
        self.process_group_timeout = process_group_timeout
        self._flag_in_reads = True  # read_numbers may raise on the NaN flag (one process)
        self._distributed_sampler = None
        self.module = None
        self._built_loaders = []  # loaders fit made from the module's (workers released at end)
        self._unchecked_losses, self._checked_upto, self._warned_no_step = [], 0, False
        self._scheduler_configs, self.optimizer_frequencies, self._stepped = [], None, ()
        self.optimizers, self.lr_schedulers = [], []
        self.nb_training_batches = self.nb_val_batches = self.nb_test_batches = 0
        self.nb_batches_this_epoch = self.nb_batches_done_at_epoch_start = 0
        self.last_loss, self.last_prog, self.last_log = None, _EMPTY, _EMPTY
        self._recent_losses = collections.deque(maxlen=20)
        self.val_metrics, self._test_metrics = {}, {}
        self._hooks = None
        self._resume_position = None
        self._preemption = None

    # ------------------------------------------------------------------ readable state
    @property
    def current_epoch(self):
        return self.state.epoch

    @property
    def global_step(self):
        return self.state.global_step

    @property
    def num_gpus(self):
        """How many GPUs this process trains on (0 on the CPU)."""
        return len(self.device.gpu_ids or ())

    @property
    def root_gpu(self):
        """The id of the GPU that holds the module and the batches (``None`` on the CPU)."""
        return self.device.gpu_ids[0] if self.device.gpu_ids else None

    @property
    def experiment(self):
        """The test-tube Experiment (or the logger standing for it), ``None`` if disabled.
        On ranks other than 0 it is the logger, whose writes do nothing there."""
        if self.logger is None or not self.world.is_zero:
            return self.logger
        return getattr(self.logger, 'experiment', self.logger)

    def running_loss(self):
        """Mean of the last (up to) 20 training losses, as a float (``nan`` before any)."""
        return self.read_numbers({'loss': self._running_loss()}).get('loss', float('nan'))

    def _running_loss(self):
        losses = self._recent_losses
        if not losses:
            return None
        if isinstance(losses[-1], float):
            return sum(losses) / len(losses)
        return torch.stack(list(losses)).float().mean()  # on the device: no host sync here

    def last_loss_value(self):
        """The last training loss as a float (a host read on accelerators)."""
        return self.read_numbers({'loss': self.last_loss}).get('loss', float('nan'))

    @property
    def tqdm_metrics(self):
        """What the progress bar shows: epoch, batch, running loss, every optimizer's prog
        dict and the latest validation metrics, as numbers (read from the device in one
        transfer, on access): ``bar_postfix(read_numbers(bar_values()))``."""
        return self.bar_postfix(self.read_numbers(self.bar_values()))

    def bar_values(self):
        """The values behind the bar's numbers, as they are (tensors stay on the device): the
        running loss (``'loss'``), every optimizer's last prog dict, the latest validation
        metrics."""
        return {'loss': self._running_loss(), **self.last_prog, **self.val_metrics}

    def bar_postfix(self, numbers):
        """The bar's postfix from ``numbers`` (``bar_values()`` read as numbers): the current
        epoch and batch first, the loss with 3 decimals, then the rest."""
        metrics = {'epoch': self.state.epoch, 'batch_nb': self.state.batch_idx}
        numbers = dict(numbers)
        if 'loss' in numbers:
            metrics['loss'] = f"{numbers.pop('loss'):.3f}"
        metrics.update(numbers)
        return metrics

    def read_numbers(self, metrics):
        """``metrics`` as Python numbers (scalar values only), with every scalar tensor read
        from the device in one transfer together with the pending NaN/inf flag of the
        training losses, which raises ``NonFiniteLossError`` here if it is set. The progress
        bar and the log rows read through this: no other host sync happens per batch."""
        probe = self._loss_probe() if self._flag_in_reads and self._unchecked_losses else None
        if probe is not None:
            self._unchecked_losses.clear()
            metrics = {**metrics, _FLAG: probe}
        numbers = numbers_only(metrics)
        if probe is not None:
            since, self._checked_upto = self._checked_upto, self.state.total_batches
            if not math.isfinite(numbers.pop(_FLAG)):
                self._raise_nonfinite(float('nan'), f'in training batches {since}..'
                                      f'{self.state.total_batches - 1} of the run (counted '
                                      f'from 0; now in epoch {self.state.epoch})', stepped=True)
        return numbers

    @property
    def callback_metrics(self):
        """The latest training step's dicts and loss, validation and test metrics (tensors
        stay tensors, detached from autograd; computed on access)."""
        metrics = dict(self.last_log)
        metrics.update(self.last_prog)
        if self.last_loss is not None:
            metrics['loss'] = self.last_loss
        metrics.update(self.val_metrics)
        metrics.update(self._test_metrics)
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}

    def hparams_dict(self):
        return hparams_to_dict(getattr(self.module, 'hparams', None))

    # ------------------------------------------------------------------ setup
    def _build_logger(self, experiment, first_fit=True):
        if experiment is False:
            return None
        from .loggers import TestTubeLogger
        if isinstance(experiment, TestTubeLogger):
            return experiment
        if experiment is None:  # under SLURM the version is the job id, so a requeue finds it
            job = slurm_job_id() if first_fit else None
            version = int(job) if job and job.isdigit() else None
            return TestTubeLogger(save_dir=self.default_save_path, name='lightning_logs',
                                  version=version)
        return TestTubeLogger(experiment=experiment)

    def default_checkpoint_dir(self):
        """``<experiment folder>/checkpoints``, or ``default_save_path/checkpoints`` without
        logging. Default ModelCheckpoint files and HPC checkpoints go here. A logger without
        a ``log_dir`` gives ``default_save_path/<name>/version_<version>``, leaving out the
        parts it leaves ``None`` (``LightningLoggerBase``'s defaults)."""
        if self.logger is None:
            return os.path.join(self.default_save_path, 'checkpoints')
        folder = getattr(self.logger, 'log_dir', None)
        if not folder:
            name = getattr(self.logger, 'name', None)
            version = getattr(self.logger, 'version', None)
            parts = ([] if name is None else [str(name)]) + (
                [] if version is None else [f'version_{version}'])
            folder = os.path.join(self.default_save_path, *parts)
        return os.path.join(folder, 'checkpoints')

    def _callbacks(self):
        built_in = [cb for cb in (self.checkpoint_callback, self.early_stop_callback) if cb]
        if self.logger is not None and self.world.is_zero:  # rank 0 logs and draws
            built_in.append(MetricsLogging(self.logger, self.add_log_row_interval,
                                           self.log_save_interval, self.track_grad_norm))
        if self.progress_bar and self.world.is_zero:
            built_in.append(ProgressBar(position=self.process_position))
        return self.user_callbacks + built_in

    def _attach(self, model):
        from .loggers import TestTubeLogger
        if isinstance(self.logger, TestTubeLogger):  # another logger needs no test-tube
            import importlib.util
            if importlib.util.find_spec('test_tube') is None:
                raise MisconfigurationException(
                    "Trainer(experiment=None) logs with test-tube, which is not installed. "
                    "`pip install test-tube`, or pass experiment=False to train without logging.")
        self.device.setup(model)
        self.module = model
        model.trainer = self
        model.experiment = self.experiment
        self._active_callbacks = self.checkpointed_callbacks = self._callbacks()
        self._hooks = HookDispatcher(self, model, self._active_callbacks)

    def _check_output_folders(self):
        """Before the first batch, the folders this fit will write into that are known now:
        each explicit ``ModelCheckpoint(filepath=...)``, and ``default_save_path`` when the
        default logger or (without a logger) the default checkpoint folder lies under it. A
        custom logger's folder is the logger's to check. Rank 0 only: it writes the files."""
        if not self.world.is_zero:
            return
        checkpoints = [cb for cb in self._active_callbacks if isinstance(cb, ModelCheckpoint)]
        for cb in checkpoints:
            if cb.filepath is not None:
                checks.check_writable_folder(cb.filepath,
                                             f'ModelCheckpoint(filepath={cb.filepath!r})')
        default_folder_used = slurm_job_id() is not None or any(cb.filepath is None
                                                                for cb in checkpoints)
        if self._logs_in_save_path or (self.logger is None and default_folder_used):
            checks.check_writable_folder(
                self.default_save_path, f'Trainer(default_save_path={self.default_save_path!r})')

    def _batch_limit(self, loader, percent, name):
        if self.fast_dev_run:
            return 1
        return limited_batches(loader, percent, name)

    def _setup_fit(self, model):
        checks.check_module(model)
        model.train()
        self._attach(model)
        configured = normalize_optimizers(model.configure_optimizers())
        self.optimizers, self._scheduler_configs = configured.optimizers, configured.schedulers
        self.lr_schedulers = [config['scheduler'] for config in self._scheduler_configs]
        self.optimizer_frequencies = configured.frequencies
        checks.check_optimizer_parameters(self.optimizers, model)
        checks.check_optimizer_frequencies(configured.frequencies, self.accumulate_grad_batches)
        if len(self.state.optimizer_steps) != len(self.optimizers):
            self.state.optimizer_steps = [0] * len(self.optimizers)
        checks.check_closure_optimizers(self.optimizers, self.accumulate_grad_batches,
                                        self.precision, self._hooks, model)
        checks.check_tbptt(self.truncated_bptt_steps, self.accumulate_grad_batches, model,
                           len(self.optimizers), isinstance(self.device, DataParallelDevice))
        if self.truncated_bptt_steps:  # (batch, batch_nb[, optimizer_i]) then hiddens
            self._train_step_arity = 3 if len(self.optimizers) > 1 else 2
        else:
            self._train_step_arity = step_arity(model, 'training_step', len(self.optimizers))
        self.device.prepare(model, len(self.optimizers))  # DDP's wrapper, before any freezing
        users = get_loader(model, 'train')
        self._train_loader, self._resumable_sampler = make_resumable(
            self._training_loader(model, users))
        self._built_loaders = [self._train_loader] if self._train_loader is not users else []
        self.nb_training_batches = self._batch_limit(self._train_loader, self.train_percent_check,
                                                     'train_percent_check')
        if self.nb_training_batches == 0:
            raise MisconfigurationException(
                f"{find_loader_attr(model, 'train')} returned an empty loader (len 0). Check the "
                f"dataset size and batch_size (with drop_last=True a dataset smaller than one "
                f"batch is empty).")
        if self.world.world_size > 1:  # a rank that left the epoch early would hang the others
            counts = self.world.gather_objects(self.nb_training_batches)
            if len(set(counts)) > 1:
                per_rank = ', '.join(f'rank {r}: {n}' for r, n in enumerate(counts))
                raise MisconfigurationException(
                    f"{find_loader_attr(model, 'train')} gives the ranks different numbers of "
                    f"training batches per epoch ({per_rank}). Every rank must run as many "
                    f"batches: use a DataLoader with shuffle=True/False (the trainer shards it "
                    f"evenly) or a DistributedSampler.")
        self._val_loaders, self._val_sharded = self._eval_loaders(model, 'val')  # [] without
        self._val_step = step_arity(model, 'validation_step', len(self._val_loaders),
                                    'val_dataloader')
        self._val_limits = [self._batch_limit(loader, self.val_percent_check, 'val_percent_check')
                            for loader in self._val_loaders]
        self.nb_val_batches = _total(self._val_limits)
        self._val_every = self._validation_interval()
        if not self._val_loaders:
            checks.check_early_stopping_has_validation(self._active_callbacks, model)
        if not self._val_loaders and any(
                isinstance(c['scheduler'], torch.optim.lr_scheduler.ReduceLROnPlateau)
                and c['interval'] == 'epoch' for c in self._scheduler_configs):
            raise MisconfigurationException(
                "configure_optimizers returned a ReduceLROnPlateau scheduler, which steps on "
                "'val_loss', but the model has no validation. Add validation_step and "
                "val_dataloader, or use a scheduler that does not need a metric.")
        self.param_groups = [[p for g in opt.param_groups for p in g['params']]
                              for opt in self.optimizers]
        self._unchecked_outputs = len(self.optimizers)  # first batch: one per optimizer

    def _training_loader(self, model, loader):
        """The module's training ``loader``; with several processes, each rank's share of it."""
        world = self.world
        self._distributed_sampler = None
        if world.world_size > 1:  # one shuffle seed for all ranks: rank 0's torch seed
            seed = world.broadcast_object(torch.initial_seed() % 2 ** 31)
            loader, self._distributed_sampler = distributed_loader(
                loader, world.rank, world.world_size, seed, find_loader_attr(model, 'train'))
        return loader

    def _validation_interval(self):
        """Training batches between validation points (``None``: at epoch end only)."""
        if not self._val_loaders or self.nb_val_batches == 0:
            return 0
        every, epochs = self.check_val_every_n_epoch, self.max_nb_epochs
        if every > epochs and not self.fast_dev_run:
            raise MisconfigurationException(
                f"Trainer(check_val_every_n_epoch={every}, max_nb_epochs={epochs}): validation "
                f"runs once every {every} epochs, so in {epochs} validation would never run. Use "
                f"check_val_every_n_epoch <= {epochs}.")
        nb, vci = self.nb_training_batches, self.val_check_interval
        if isinstance(vci, int) and not isinstance(vci, bool):
            if nb is not None and vci > nb:
                raise MisconfigurationException(
                    f"Trainer(val_check_interval={vci}) is larger than the {nb} training "
                    f"batches per epoch, so validation would never run. Use an int <= {nb} or "
                    f"a float fraction such as 1.0.")
            return vci
        if nb is None:
            if vci < 1.0:
                raise MisconfigurationException(
                    f"Trainer(val_check_interval={vci}) needs to know the epoch length, but "
                    f"the training loader has no len(). Use an int (every N batches) or 1.0.")
            return None
        return max(1, int(nb * vci))

    def _accumulation_for(self, epoch):
        acc = self.accumulate_grad_batches
        if isinstance(acc, dict):
            factor = 1
            for start in sorted(acc):
                if epoch >= start:
                    factor = acc[start]
            return factor
        return acc

    # ------------------------------------------------------------------ fit
    def fit(self, model):
        """Train ``model``; returns ``None``. Misconfiguration is reported before the
        first batch. Logs are saved even when training raises. Under SLURM, SIGUSR1 ends
        the process with exit code 0 after writing an HPC checkpoint and requeueing."""
        self.state = TrainerState()  # each fit runs its epochs from the start (or the checkpoint)
        self._fits += 1
        if self._fits > 1:
            self._start_new_run()
        if self._distributed and self._fit_elsewhere(model):
            return  # the spawned processes trained; this trainer holds rank 0's result
        self._setup_fit(model)
        hooks = self._hooks
        hooks.call('on_fit_setup')  # callbacks reset; a checkpoint restores them next
        self._restore_if_asked()
        self._check_output_folders()
        self._preemption = self._install_preemption()
        termination = TerminationGuard().install()
        try:
            if self.print_weights_summary and self.world.is_zero:
                model.summarize()
            hooks.call('on_fit_start')
            self._sanity_check()
            self._train()
            self.state.stage = 'idle'
            # the loop's checkpoints are durable before on_fit_end records the run as
            # finished: a save that failed fails the run instead
            checkpoint_io.wait_for_saves()
            hooks.call('on_fit_end')
            checkpoint_io.wait_for_saves()  # any that on_fit_end started
        except _Preempted as stop:
            self._close_after_failure(stop)
            if self.world.is_zero:
                print(f'SLURM preemption: {stop}; exiting so the requeued job can resume.')
            raise SystemExit(0)
        except BaseException as err:
            termination.closing()
            self._close_after_failure(err)
            if isinstance(err, Terminated) or termination.pending:  # saved: now die of it
                termination.die()
            if isinstance(err, KeyboardInterrupt) and self.world.is_zero:
                self._print_resume_hint()
            raise
        finally:
            termination.uninstall()
            self.device.teardown(model)
            for loader in self._built_loaders:  # the copies fit made: their workers stop now
                release_workers(loader)
            if self._preemption is not None:
                self._preemption.uninstall()
                self._preemption = None

    def _start_new_run(self):
        """A second ``fit`` on this Trainer is a new run: a new log version (default logger),
        nothing left over from the last run's metrics or warnings, a fresh precision part
        (loss scaler)."""
        if self.logger is not None:
            if self._experiment_arg is None:
                self.logger = self._build_logger(None, first_fit=False)
            elif self.resume_from_checkpoint is None and self.unfinished_run_checkpoint() is None:
                folder = os.path.dirname(self.default_checkpoint_dir())
                raise MisconfigurationException(
                    f"fit() was called again on a Trainer that logs into one fixed version "
                    f"({folder}); a second run would mix its rows with the "
                    f"first's. Use a new Trainer with another Experiment (or experiment=None "
                    f"for the next free version each fit), or pass resume_from_checkpoint= "
                    f"to continue the first run.")
        self.val_metrics, self._test_metrics = {}, {}
        self.last_loss, self.last_prog, self.last_log = None, _EMPTY, _EMPTY
        self._recent_losses.clear()
        self._warned_no_step = False  # the missing optimizer.step() warning: once per run
        self.precision = self._new_precision()  # a resume restores the saved scaler

    def _new_precision(self):
        """The precision part the AMP arguments ask for, fresh (a float16 loss scaler at its
        initial scale)."""
        args = self._init_args
        return make_precision(args['use_amp'], args['amp_dtype'], args['amp_level'],
                              self.device.root.type)

    def _print_resume_hint(self):
        """After Ctrl-C (pending saves done): where the newest checkpoint is, and the
        argument that resumes from it. Printed to stderr, just above the traceback."""
        paths = [cb.last_path for cb in self._active_callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.last_path is not None]
        paths = [path for path in paths if os.path.isfile(path)]
        if not paths:
            print('Interrupted. No checkpoint was written in this run.', file=sys.stderr)
            return
        path = max(paths, key=os.path.getmtime)  # the newest, with several ModelCheckpoints
        print(f'Interrupted. The last checkpoint is {path}; resume with '
              f'Trainer(resume_from_checkpoint={path!r})', file=sys.stderr)

    def _close_after_failure(self, err):
        """Every callback's ``on_exception`` (the bar closes, the logs are saved), then the
        pending checkpoint writes finish; the original error still propagates."""
        self.state.stage = 'idle'
        closers = [(getattr(fn, 'func', fn).__qualname__, functools.partial(fn, err))
                   for fn in self._hooks.hooks['on_exception']]
        for name, close in closers + [('checkpoint saving', checkpoint_io.wait_for_saves)]:
            try:
                close()
            except Exception as close_err:
                note = f'(while closing after this error, {name} also failed: {close_err!r})'
                if hasattr(err, 'add_note'):
                    err.add_note(note)
                else:  # Python < 3.11
                    print(note, file=sys.stderr)

    # ------------------------------------------------------------------ loop
    def _train(self):
        state = self.state
        start, resume = self._start_position()
        # the NaN checks count from this fit's first batch (a resume: the checkpoint's)
        self._unchecked_losses.clear()
        self._checked_upto = state.total_batches
        for epoch in range(start, self.max_nb_epochs):
            state.epoch = epoch
            state.stage = 'train'
            self._epoch_done = False
            self._run_epoch(epoch, resume)
            resume = None
            for config in self._scheduler_configs:
                if config['interval'] == 'epoch' and (epoch + 1) % config['frequency'] == 0:
                    self._step_scheduler(config, self._epoch_validated)
            self._epoch_done = True
            self._save_point()
            if state.should_stop and epoch + 1 >= self.min_nb_epochs:
                break

    def _step_scheduler(self, config, validated=True):
        """One ``step()`` of the scheduler in ``config``; a ``ReduceLROnPlateau`` steps on
        its ``monitor`` (epoch-wise: from this epoch's validation, skipped when none ran;
        step-wise: from the latest metrics, ``callback_metrics``)."""
        scheduler, key = config['scheduler'], config['monitor']
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()
            return
        if config['interval'] == 'epoch' and not validated:
            return  # it steps on this epoch's validation metric; none was computed
        metrics = self.val_metrics if config['interval'] == 'epoch' else self.callback_metrics
        if key not in metrics:
            raise MisconfigurationException(
                f"ReduceLROnPlateau steps on {key!r} (its 'monitor'), but the metrics hold "
                f"{sorted(metrics)}. Return {key!r} from validation_end (or training_step's "
                f"dicts for interval 'step'), or set the scheduler dict's 'monitor'.")
        scheduler.step(to_number(metrics[key]))

    def _run_epoch(self, epoch, resume=None):
        state, hooks = self.state, self._hooks
        nb = self.nb_training_batches
        val_epoch = (epoch + 1) % self.check_val_every_n_epoch == 0
        val_every = self._val_every if val_epoch else 0
        nb_val = self.nb_val_batches
        self.nb_batches_this_epoch = _with_validation(nb, val_every, nb_val)
        done = 0 if resume is None else resume[0]['batches_done']  # mid-epoch resume
        # whether a validation ran in this epoch (a resume: its points before the save point);
        # an epoch that ends before its validation point did not validate
        self._epoch_validated = bool(val_every) and done >= val_every
        self.nb_batches_done_at_epoch_start = (  # unknown validation: the training batches
            _with_validation(done, val_every, nb_val) or done)
        hooks.call('on_epoch_start')
        self._epoch_accumulation = self._accumulation_for(epoch)
        device = self.device if self.device.transfers_batches else None
        module_batch_start = hooks.module_on_batch_start
        callback_batch_start = hooks.hooks['on_batch_start']
        batch_end = hooks.hooks['on_batch_end']
        save_point_hooks = hooks.hooks['on_save_point']
        min_epochs = self.min_nb_epochs
        check_every = self.add_log_row_interval
        # ranks agree on stopping at fixed batch counts (one process: after every batch)
        decide_every = 1 if self.world.world_size == 1 else check_every
        agree = self.world.agree
        if self._distributed_sampler is not None:
            self._distributed_sampler.set_epoch(epoch)
        first, iterator = self._epoch_batches(resume)
        batches = iterator  # with a limit: stop without loading a batch past it
        if nb is not None:
            batches = itertools.islice(iterator, max(0, nb - first))
        # the epoch's last batch when it is the last of the loader the trainer rebuilt (see
        # the end of the loop below; another iterable might load a batch past its len())
        last = (nb if self._resumable_sampler is not None
                and nb == loader_length(self._train_loader) else None)
        with workers_stopped_on_error(iterator, self._train_loader):
            for batch_idx, batch in enumerate(batches, first):
                state.batch_idx = batch_idx
                if device is not None:
                    batch = device.to_device(self.module, batch)
                if module_batch_start is not None and agree(module_batch_start(batch) == -1)[0]:
                    break
                for fn in callback_batch_start:
                    fn(batch)
                self._training_batch(batch, batch_idx)
                state.total_batches += 1
                for fn in batch_end:  # a log row here reads the NaN flag with its numbers
                    fn()
                if (self._unchecked_losses and self._flag_in_reads  # DDP: at decision points
                        and state.total_batches - self._checked_upto >= check_every):
                    self.check_finite_losses()
                validated = val_every and (batch_idx + 1) % val_every == 0
                if validated:
                    self._validate()
                    self._epoch_validated = True
                if batch_idx + 1 == last:
                    # a plain `for batch in loader` asks once more and finds the sampler
                    # exhausted; that call can draw random numbers (torch's RandomSampler
                    # draws another permutation from its generator), so ask too (no batch is
                    # loaded): the next epoch's shuffle is then the user's loader's. Before
                    # the save point, which records the random state after it.
                    next(iterator, None)
                for fn in save_point_hooks:  # the save point (see _save_point), inlined
                    fn()
                if decide_every == 1 or validated or state.total_batches % decide_every == 0:
                    self._decide()
                    if state.should_stop and epoch >= min_epochs:  # min epochs already complete
                        break
        if state.accumulation_position:  # loader ran out (or stopped) mid-window
            for opt_i, optimizer in enumerate(self.optimizers):
                self.world.reduce_gradients(self.param_groups[opt_i])  # DDP did not sync them
                self.precision.unscale(optimizer)
                self._before_optimizer_step(optimizer, opt_i)
                self._optimizer_step(optimizer, opt_i, None)
            self._stepped = tuple(enumerate(self.optimizers))
            self._close_window()
        self.check_finite_losses()
        if val_every is None and val_epoch:
            self._validate()
            self._epoch_validated = True
        hooks.call('on_epoch_end')

    def _training_batch(self, batch, batch_idx):
        """One training batch. With ``truncated_bptt_steps`` the batch is split along time
        (``tbptt_split_batch``) and each split is trained in turn (one backward and one
        optimizer step each), with the ``hiddens`` the previous split returned, detached."""
        if not self.truncated_bptt_steps:
            self._train_on(batch, batch_idx)
            return
        self._hiddens = None  # what every optimizer's training_step gets in this split
        for split in self.module.tbptt_split_batch(batch, self.truncated_bptt_steps):
            self._next_hiddens = None
            self._train_on(split, batch_idx)
            self._hiddens = _detached(self._next_hiddens)

    def _train_on(self, batch, batch_idx):
        """For each optimizer, a closure that runs ``training_step`` and backward, handed to
        the optimizer step when the accumulation window completes (so closure optimizers such
        as LBFGS work like SGD), else run once."""
        state = self.state
        if state.accumulation_position == 0:
            acc, nb = self._epoch_accumulation, self.nb_training_batches
            self._window = acc if acc == 1 or nb is None else min(acc, nb - batch_idx)
        completes = state.accumulation_position + 1 == self._window
        prog, log = {}, {}  # every optimizer's dicts; on a shared name the last one wins
        self._stepped = tuple(self._due_optimizers())
        for opt_i, optimizer in self._stepped:
            closure = _TrainingClosure(self, batch, batch_idx, opt_i, optimizer, completes)
            if completes:
                self._optimizer_step(optimizer, opt_i, closure)
            else:
                with self.device.no_sync():  # DDP: all-reduce once, with the window's last
                    closure()
            if closure.result is None:  # an override given second_order_closure never ran it
                raise MisconfigurationException(
                    f"{type(self.module).__name__}.optimizer_step received "
                    f"second_order_closure but did not call it, so training_step never ran. "
                    f"Call optimizer.step(second_order_closure) or optimizer.step() in it.")
            loss, step_prog, step_log = closure.result
            prog.update(step_prog)
            log.update(step_log)
        self.last_loss, self.last_prog, self.last_log = loss, prog, log
        if completes:
            self._close_window()
        else:
            state.accumulation_position += 1

    def _close_window(self):
        """After the optimizers of a complete accumulation window stepped: the scaler's
        update, the step-wise schedulers, the counters."""
        self.precision.update()
        self._step_schedulers_per_step()
        self.state.accumulation_position = 0
        self.state.global_step += 1

    def _due_optimizers(self):
        """``(optimizer_i, optimizer)`` of every optimizer, or with frequencies only the one
        whose turn this training batch is (turns counted by ``total_batches``, so a resume
        continues the cycle exactly)."""
        freqs = self.optimizer_frequencies
        if freqs is None:
            return enumerate(self.optimizers)
        position = self.state.total_batches % sum(freqs)
        for opt_i, freq in enumerate(freqs):
            if position < freq:
                return ((opt_i, self.optimizers[opt_i]),)
            position -= freq

    def _step_schedulers_per_step(self):
        """After the optimizers of a batch stepped: count each optimizer's steps and step its
        'step'-interval schedulers every ``frequency`` of them."""
        steps, stepped = self.state.optimizer_steps, [opt_i for opt_i, _ in self._stepped]
        for opt_i in stepped:
            steps[opt_i] += 1
        for config in self._scheduler_configs:
            opt_i = config['optimizer_i']
            if (config['interval'] == 'step' and opt_i in stepped
                    and steps[opt_i] % config['frequency'] == 0):
                self._step_scheduler(config)

    def _run_training_step(self, batch, batch_idx, opt_i, completes, optimizer):
        """What the closure does once: ``training_step`` (in the precision's autocast, through
        the device part), the loss check, backward; when the window completes, unscaling,
        gradient checks and clipping. Returns ``(loss, prog, log)``."""
        args = (batch_idx, opt_i)[:self._train_step_arity - 1]
        if self.truncated_bptt_steps:
            args += (self._hiddens,)
        frozen = self._freeze_other_params(opt_i) if len(self.optimizers) > 1 else ()
        try:
            out = self.device.run_step(self.module, 'training_step', batch, args,
                                       self.precision.autocast)
            try:
                loss, prog, log = self._parse_training_output(out)
                self._check_loss(loss, batch_idx, opt_i)
                window = self._window
                self._hooks.backward(loss / window if window > 1 else loss, optimizer)
            except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as err:
                # only the first batch's output is checked up front: a later one that
                # cannot be used gets the check's message (and where), not torch's error
                self._explain_training_output(out, batch_idx, opt_i, err)
                raise
        finally:
            for param in frozen:
                param.requires_grad_(True)
        for fn in self._hooks.hooks['on_after_backward']:
            fn()
        if completes:
            self.precision.unscale(optimizer)
            self._before_optimizer_step(optimizer, opt_i)
        return loss, prog, log

    def _before_optimizer_step(self, optimizer, opt_i):
        """The window's gradients are complete and true (unscaled): the hooks that read
        them, then clipping."""
        for fn in self._hooks.hooks['on_before_optimizer_step']:
            fn(optimizer, opt_i)
        if self.print_nan_grads:
            self._print_nan_grads(opt_i)
        if self.gradient_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.param_groups[opt_i], self.gradient_clip)

    def _check_loss(self, loss, batch_idx, opt_i):
        """NaN/inf check of a training loss. Where reading a scalar is free (the CPU) it is
        checked now, before backward; elsewhere the loss is kept (``_unchecked_losses``)
        and ``check_finite_losses`` (or a log row's read) checks them all at a fixed batch
        cadence through ``_loss_probe``: no host sync and no kernel per step (every
        ``_FOLD_LOSSES`` losses are folded into their sum, so memory stays bounded)."""
        if self.device.cheap_item:
            value = loss.item()
            if not math.isfinite(value):
                self._raise_nonfinite(value, f'at {self._batch_name(batch_idx, opt_i)}',
                                      stepped=False)
            self._recent_losses.append(value)
            return
        loss = loss.detach().reshape(())  # a loss of shape (1,) sums with 0-dim ones (a view)
        pending = self._unchecked_losses
        pending.append(loss)
        if len(pending) >= _FOLD_LOSSES:  # a long cadence keeps few tensors: fold them
            pending[:] = [self._loss_probe()]
        self._recent_losses.append(loss)

    def check_finite_losses(self):
        """Raise ``NonFiniteLossError`` if a training loss since the last check was NaN/inf
        (one host read of the device flag; nothing to read on the CPU, which checks every
        loss at once). Called every ``add_log_row_interval`` batches (with the log row's
        read), at each epoch end and before every checkpoint write, so ``last.ckpt`` never
        holds weights trained on a non-finite loss."""
        if not self._unchecked_losses:
            return
        if self._flag_in_reads:
            self.read_numbers({})
            return
        self._settle_nonfinite(self.world.agree(self._nonfinite_flag())[0])

    def _loss_probe(self):
        """The float32 sum of the losses not checked yet, computed on their device: NaN or
        inf exactly when one of them was (barring a sum beyond 3e38)."""
        return torch.stack([loss.float() for loss in self._unchecked_losses]).sum()

    def _nonfinite_flag(self):
        """Whether a loss not checked yet was NaN/inf, as a 0-dim bool tensor (no read)."""
        return ~torch.isfinite(self._loss_probe())

    def _settle_nonfinite(self, bad):
        """Several ranks: the NaN flag was agreed (``bad``: set on some rank); every rank
        raises together."""
        since, self._checked_upto = self._checked_upto, self.state.total_batches
        self._unchecked_losses.clear()
        if bad:
            self._raise_nonfinite(float('nan'), f'on at least one of the {self.world.world_size} '
                                  f'ranks in training batches {since}..'
                                  f'{self.state.total_batches - 1} of the run (counted from 0; '
                                  f'now in epoch {self.state.epoch})', stepped=True)

    def _optimizer_step(self, optimizer, opt_i, closure):
        """Step ``optimizer`` through the precision part (``closure`` recomputes the loss and
        gradients; ``None`` when they are already there), then ``on_before_zero_grad`` and
        ``zero_grad``. A module's ``optimizer_step`` override gets an optimizer whose
        ``step()`` goes through the precision part; the closure has run before it, unless the
        override takes ``second_order_closure`` (then it gets the closure)."""
        user_step = self._hooks.module_optimizer_step
        if user_step is None:
            self.precision.step(optimizer, closure)
        else:
            epoch, batch_idx = self.state.epoch, self.state.batch_idx
            if self._hooks.optimizer_step_takes_closure:
                proxy = _PrecisionOptimizer(optimizer, self.precision, closure)
                user_step(epoch, batch_idx, proxy, opt_i,
                          second_order_closure=closure or _no_closure)
            else:
                if closure is not None:
                    closure()  # forward and backward before the hook, as the classic trainer
                proxy = _PrecisionOptimizer(optimizer, self.precision)
                user_step(epoch, batch_idx, proxy, opt_i)
            if not proxy.stepped and not self._warned_no_step:
                self._warned_no_step = True
                warnings.warn(f"{type(self.module).__name__}.optimizer_step did not call "
                              f"optimizer.step() (epoch {epoch}, batch {batch_idx}), so "
                              f"nothing was trained in that step. Call optimizer.step() in it.",
                              stacklevel=2)
        for fn in self._hooks.hooks['on_before_zero_grad']:
            fn(optimizer)
        optimizer.zero_grad()

    def _batch_name(self, batch_idx, opt_i):
        """``'epoch 2, batch 5'``, with ``', optimizer 1'`` when there are several."""
        return f'epoch {self.state.epoch}, batch {batch_idx}' + (
            f', optimizer {opt_i}' if len(self.optimizers) > 1 else '')

    def _explain_training_output(self, out, batch_idx, opt_i, err):
        """Using a training step's output ``out`` raised ``err``: if ``out`` breaks the
        contract, raise the first-output check's ``MisconfigurationException`` for it, naming
        the batch, chained to ``err``. Otherwise return (the caller re-raises ``err``)."""
        where = f' ({self._batch_name(batch_idx, opt_i)})'
        try:
            checks.check_training_output(out, where)
            checks.check_backward_error(err, where)
        except MisconfigurationException as bad:
            raise bad from err

    def _parse_training_output(self, out):
        """``(loss, prog, log)`` from what training_step returned (fully checked on the
        first batch of each optimizer)."""
        if self._unchecked_outputs:
            checks.check_training_output(out)
            self._unchecked_outputs -= 1
        if self.truncated_bptt_steps:  # the last optimizer's; None from the other forms
            self._next_hiddens = out.get('hiddens') if isinstance(out, dict) else None
        if isinstance(out, torch.Tensor):
            return out, _EMPTY, _EMPTY
        if isinstance(out, (tuple, list)):
            loss, prog = out
            return loss, prog, prog
        if isinstance(out, dict):
            prog = out.get('prog', out.get('progress_bar', _EMPTY))  # 0.5.x: 'progress_bar'
            return out['loss'], prog, out.get('log', _EMPTY)
        checks.unsupported_output(out)


    def _freeze_other_params(self, opt_i):
        """With several optimizers, only optimizer ``opt_i``'s parameters get gradients
        from its loss (e.g. a GAN's generator loss must not touch discriminator grads)."""
        own = {id(p) for p in self.param_groups[opt_i]}
        frozen = []
        for i, params in enumerate(self.param_groups):
            if i != opt_i:
                for param in params:
                    if id(param) not in own and param.requires_grad:
                        param.requires_grad_(False)
                        frozen.append(param)
        return frozen

    def _raise_nonfinite(self, value, where, stepped=False):
        what = 'NaN or infinite' if stepped else ('NaN' if math.isnan(value) else 'infinite')
        told = ('optimizer steps were taken with it, so the weights may be damaged; resume '
                'from a checkpoint written before it' if stepped else
                'nothing was stepped with it')
        raise NonFiniteLossError(
            f"training_step returned a {what} loss {where} ({told}). Lower the learning rate, "
            f"set Trainer(gradient_clip=...), check the data for NaN/inf, or wrap fit in "
            f"torch.autograd.detect_anomaly() to find the operation.")

    def _print_nan_grads(self, opt_i):
        """The non-finite gradients of optimizer ``opt_i``'s parameters (the ones about to
        step: another optimizer's may be a scaled, partial window sum)."""
        own = {id(p) for p in self.param_groups[opt_i]}
        for name, param in self.module.named_parameters():
            if (id(param) in own and param.grad is not None
                    and not torch.isfinite(param.grad).all()):
                notice(f'non-finite gradient in {name}: {param.grad}')  # clear of the bar

def _with_validation(batches, val_every, nb_val):
    """``batches`` training batches plus the validation batches run at the validation points
    among them (every ``val_every`` batches; none when it is 0 or ``None``); ``None`` when
    that is unknown (``batches`` or, with validation points, ``nb_val`` is ``None``)."""
    if not val_every or batches is None:
        return batches
    return None if nb_val is None else batches + (batches // val_every) * nb_val


def _detached(hiddens):
    """``hiddens`` (a tensor, or tuples, named tuples, lists or dicts of them, nested) cut
    from the graph of the last split; anything else is passed on as it is."""
    if isinstance(hiddens, torch.Tensor):
        return hiddens.detach()
    if isinstance(hiddens, (tuple, list)):
        return rebuild_sequence(hiddens, [_detached(h) for h in hiddens])
    if isinstance(hiddens, Mapping):
        return rebuild_mapping(hiddens, [(key, _detached(v)) for key, v in hiddens.items()])
    return hiddens


class _TrainingClosure:
    """``training_step`` and backward for one optimizer on one batch, as the closure its step
    runs. An optimizer may call it several times (LBFGS): each call after the first zeroes the
    gradients first. ``result`` holds the last call's ``(loss, prog, log)``."""

    __slots__ = ('trainer', 'batch', 'batch_idx', 'opt_i', 'optimizer', 'completes', 'calls',
                 'result')

    def __init__(self, trainer, batch, batch_idx, opt_i, optimizer, completes):
        self.trainer, self.batch, self.batch_idx = trainer, batch, batch_idx
        self.opt_i, self.optimizer, self.completes = opt_i, optimizer, completes
        self.calls, self.result = 0, None

    def __call__(self):
        if self.calls:
            self.optimizer.zero_grad()
        self.calls += 1
        self.result = self.trainer._run_training_step(self.batch, self.batch_idx, self.opt_i,
                                                      self.completes, self.optimizer)
        return self.result[0]


class _PrecisionOptimizer:
    """What a module's ``optimizer_step`` override receives: ``step()`` goes through the
    precision part (a float16 loss scaler must never be skipped); every other attribute is the
    optimizer's own (``param_groups`` for a warm-up, ``state``, ...). ``pending``: the
    ``second_order_closure`` the override was given (``None`` when the closure has run); a
    ``step()`` without a closure before it ran runs it, as ``step(second_order_closure)``."""

    def __init__(self, optimizer, precision, pending=None):
        self.__dict__.update(optimizer=optimizer, precision=precision, _pending=pending,
                             stepped=False)

    def step(self, closure=None):
        pending = self.__dict__['_pending']
        if closure is None and pending is not None and not pending.calls:
            # the 0.5.x form: `optimizer.step()` in an override that takes
            # second_order_closure (0.5.x ran forward and backward before the hook)
            closure = pending
        self.__dict__['stepped'] = True
        return self.precision.step(self.optimizer, closure)

    def __getattr__(self, name):
        return getattr(self.__dict__['optimizer'], name)

    def __setattr__(self, name, value):
        setattr(self.optimizer, name, value)

    def __repr__(self):
        return repr(self.optimizer)


def _no_closure():
    """The ``second_order_closure`` of a step whose gradients are already there."""

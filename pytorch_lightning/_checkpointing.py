"""Checkpoints, exact resume and SLURM preemption: the part of the ``Trainer`` that saves
and restores the run. A mixin, so the loop in ``trainer.py`` stays short; it works on the
trainer's own state (``self``) and never imports ``trainer.py``.

What goes into a checkpoint and how it is written is ``checkpoint_io``'s job; this file
decides *where the loop stands* (the position), *when* an HPC checkpoint is written, and how a
resumed epoch skips the batches already done."""
import glob
import itertools
import os
import re

from . import checkpoint_io
from .callbacks._monitor import notice
from .data import generator_states, restore_generator_states
from .exceptions import MisconfigurationException
from .utilities.slurm import PreemptionSignal, requeue, slurm_job_id


class _Preempted(BaseException):
    """Internal: SIGUSR1 arrived; the HPC checkpoint is written and the job requeued. Like
    ``KeyboardInterrupt``, an interruption, not an error (``except Exception`` passes it)."""


class CheckpointingMixin:
    """``save_checkpoint`` and the resume/preemption steps ``Trainer.fit`` calls."""

    def save_checkpoint(self, path, then=None, background=False):
        """Write a checkpoint of the whole run to ``path`` atomically; returns ``None``.

        When it returns, the file is complete and durable under ``path`` (written to a
        temporary file, fsynced, renamed), and the logger's rows it counts are on disk, so
        ``Model.load_from_checkpoint(path)`` can follow at once. Resuming from it is exact when
        it is called at a save point (``Callback.on_save_point``) or after ``fit`` returned
        (the position is then "epoch complete": a resume starts the next epoch).

        ``background=True`` (what ``ModelCheckpoint`` uses inside the loop) returns once the
        file is written; its fsync and rename finish on another thread, which ``fit`` (and
        ``checkpoint_io.wait_for_saves()``) waits for. ``then()`` runs after the rename.
        Called before ``fit`` it raises ``MisconfigurationException``.

        With several processes (DDP) saving is a collective: every rank must call it at the
        same point (the built-in callbacks do, since they decide from the same gathered
        metrics); each hands over its random state, so a resume restores every rank's own,
        and rank 0 writes the file (``then`` runs there only)."""
        if getattr(self, '_train_loader', None) is None:  # set when fit sets the run up
            raise MisconfigurationException(
                f"save_checkpoint({os.fspath(path)!r}) was called before fit(): there is no "
                f"run to save yet. Call it from a callback during fit, or after fit returned.")
        self._write_checkpoint(path, then, background)

    def _write_checkpoint(self, path, then=None, background=False, hpc=False):
        """``save_checkpoint``'s work; ``hpc``: an HPC checkpoint, which the module's classic
        ``on_hpc_save(checkpoint)`` may add to once it is built (rank 0, which writes it)."""
        self.check_finite_losses()  # never save weights trained on a NaN loss
        (position, rng), ranks = self._loop_position(), None
        if self.world.world_size > 1:
            ranks = self.world.gather_objects({'position': position, 'rng': rng})
            if not self.world.is_zero:
                return
        checkpoint = checkpoint_io.dump(self, position, durable_logs=not background, ranks=ranks,
                                        rng=rng)
        hook = getattr(self.module, 'on_hpc_save', None) if hpc else None
        if hook is not None:
            hook(checkpoint)
        checkpoint_io.atomic_save(checkpoint, path,
                                  background=background, then=then)

    # Where the loop stands, kept up to date by the loop (see _loop_position). Reset at the
    # start of every fit by _restore_if_asked; these are the values before any fit.
    _epoch_done = False      # the current epoch (state.epoch) is completely done
    _loop_started = False    # this fit's epoch loop has begun (the sanity check is over)
    _batches_epoch = None    # the epoch whose batches have begun (its shuffle is drawn)

    def _position(self):
        """Where the loop stands now, as a checkpoint records it (see ``_loop_position``)."""
        return self._loop_position()[0]

    def _loop_position(self):
        """``(position, rng)``: where the loop stands and the random state that goes with it,
        as a checkpoint written now records them. One of:

        - a resume restored at this fit's start that the loop has not taken up yet (during
          ``on_fit_start``, the sanity check, the resumed epoch's ``on_epoch_start``): that
          checkpoint's own position and random state, so a resume from here continues there;
        - ``epoch_complete``: the epoch ``state.epoch`` is done (a resume starts the next);
        - ``before``: the batches of epoch ``state.epoch`` have not begun. ``'fit'``: saved
          before this fit's loop (``on_fit_start``, the sanity check), a resume restores the
          random state before its own sanity check; ``'epoch'``: saved in ``on_epoch_start``,
          a resume restores it when its loop starts and runs the epoch from its first batch;
        - mid-epoch: the batches done in the epoch and what redraws its shuffle."""
        if self._resume_position is not None:
            return self._resume_position
        state, rng = self.state, checkpoint_io.capture_rng()
        now = generator_states(self._train_loader)  # a loader's own shuffling generator
        if self._epoch_done:
            return {'epoch_complete': True, 'generators_now': now}, rng
        if self._batches_epoch != state.epoch:
            return {'epoch_complete': False, 'before': 'epoch' if self._loop_started else 'fit',
                    'generators_now': now}, rng
        sampler = self._resumable_sampler
        return {'epoch_complete': False, 'batches_done': state.batch_idx + 1,
                'sampler_draws': None if sampler is None else sampler.draws,
                'window': self._window, 'epoch_start_rng': self._epoch_start_rng,
                'epoch_start_generators': self._epoch_start_generators,
                'generators_now': now}, rng

    def _start_position(self):
        """At the start of the epoch loop: ``(first epoch, resume)``, ``resume`` being the
        restored ``(position, rng)`` of a mid-epoch checkpoint (``_epoch_batches`` takes it
        up) or ``None``. A checkpoint taken at an epoch end, or before an epoch's batches,
        gets its random state back here, after the sanity check. One taken at the end of the
        epoch where a stop took effect (``should_stop`` once ``min_nb_epochs`` were done)
        leaves no epoch to run, as the run that wrote it ended there."""
        self._loop_started = True
        resume, start = self._resume_position, self.state.epoch
        if resume is None or not (resume[0]['epoch_complete'] or 'before' in resume[0]):
            return start, resume
        self._resume_position = None
        self._restore_now(*resume)
        if resume[0]['epoch_complete']:
            self._epoch_done = True  # until the next epoch begins (none may: max_nb_epochs)
            if self.state.should_stop and start + 1 >= self.min_nb_epochs:
                # the run stopped right after this save point: the loop has nothing left
                return self.max_nb_epochs, None
            return start + 1, None
        return start, None

    def _restore_now(self, position, rng):
        """Random state as it was at the save point (global RNGs and loader generators)."""
        checkpoint_io.restore_rng(rng)
        restore_generator_states(self._train_loader, position['generators_now'])

    def _epoch_start(self, saved=None):
        """Record the random state the epoch's shuffle is drawn from, as the epoch start a
        mid-epoch checkpoint saves (``saved``: set the RNGs to that state first). Runs just
        before the shuffle is drawn: at the batch sampler's first draw, or before
        ``iter(loader)`` for a loader without a ``ResumableBatchSampler``."""
        if saved is None:
            saved = checkpoint_io.capture_rng(), generator_states(self._train_loader)
        else:
            checkpoint_io.restore_rng(saved[0])
            restore_generator_states(self._train_loader, saved[1])
        self._epoch_start_rng, self._epoch_start_generators = saved

    def _hpc_checkpoints(self):
        found = []
        for path in glob.glob(os.path.join(glob.escape(self.default_checkpoint_dir()), 'hpc_ckpt_*.ckpt')):
            match = re.fullmatch(r'hpc_ckpt_(\d+)\.ckpt', os.path.basename(path))
            if match:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def _restore_if_asked(self):
        """At the start of every fit (after ``on_fit_setup``): the loop position is "before
        the loop" (a fresh run), then the checkpoint to continue from, if any, is restored."""
        self._epoch_done, self._loop_started, self._batches_epoch = False, False, None
        self._window = 1  # no accumulation window is open before the first batch
        found = self._checkpoint_to_restore() if self.world.is_zero else None
        if self.world.world_size > 1:  # rank 0 looked; every rank restores the same file
            found = self.world.broadcast_object(found)
        self._resume_position = None
        if found is None:
            return
        path, requeued = found
        checkpoint = checkpoint_io.load(path)
        position, rng = checkpoint_io.restore(self, checkpoint, path)
        hook = getattr(self.module, 'on_hpc_load', None) if requeued else None
        if hook is not None:  # classic: a requeued job restored its HPC checkpoint
            hook(checkpoint)
        self._resume_position = (position, rng)
        if position.get('before') == 'fit':  # saved before the sanity check: same state now
            self._restore_now(position, rng)
            self._resume_position = None
        if self.world.is_zero:
            print(f'resumed from {os.fspath(path)} (epoch {self.state.epoch}, '
                  f'global step {self.state.global_step})')

    def _checkpoint_to_restore(self):
        """``(path, requeued)`` of the checkpoint this fit continues from:
        ``resume_from_checkpoint``, else, for a requeued SLURM job, its newest HPC checkpoint
        or the run's ``last.ckpt`` if that one is further along (``_further_than_hpc``), else
        an unfinished run's; ``None`` when none."""
        path = self.resume_from_checkpoint
        if path is None and slurm_job_id() is not None and (
                self.logger is None or getattr(self.logger, '_version', 0) is not None):
            hpc = self._hpc_checkpoints()  # a requeued SLURM job continues where it stopped
            if hpc:
                return self._further_than_hpc(hpc[-1])
        if path is None:
            path = self.unfinished_run_checkpoint()
            if path is not None:
                print(f'the run in {os.path.dirname(os.path.dirname(path))} did not finish: '
                      f'restoring its newest checkpoint, {path}')
            elif self._run_unfinished():
                self._restart_unfinished_run()
        return None if path is None else (path, False)

    def _further_than_hpc(self, hpc):
        """``(path, requeued)`` for a requeued SLURM job whose newest HPC checkpoint is
        ``hpc``: that file, unless a ``last.ckpt`` (``{prefix}last.ckpt``) in the same folder
        records more training batches done (the job was requeued after a node failure, with
        no preemption to write a newer HPC checkpoint); ``requeued`` is ``True`` for the HPC
        file (its ``on_hpc_load`` runs)."""
        best, most = (hpc, True), checkpoint_io.batches_done(hpc)
        folder = glob.escape(os.path.dirname(hpc))
        for path in sorted(glob.glob(os.path.join(folder, '*last.ckpt'))):
            done = checkpoint_io.batches_done(path)
            if done is not None and (most is None or done > most):
                best, most = (path, False), done
        return best

    def _run_unfinished(self):
        """Whether this trainer logs into a version given by the user whose last run did not
        finish (``run_status.json``: running, died, failed or interrupted)."""
        if self.logger is None or getattr(self.logger, '_version', None) is None:
            return False
        run_status = getattr(self.logger, 'run_status', None)
        return run_status is not None and run_status() not in (None, 'finished')

    def _restart_unfinished_run(self):
        """An unfinished run that left no checkpoint starts again from its beginning: the
        rows it logged are dropped when the logger opens, so steps are not logged twice."""
        folder = os.path.dirname(self.default_checkpoint_dir())
        print(f'the run in {folder} did not finish and left no checkpoint: it starts again '
              f'from the beginning, replacing the rows it logged')
        if hasattr(self.logger, 'load_state_dict'):
            self.logger.load_state_dict({'name': self.logger.name,
                                         'version': self.logger.version, 'rows': 0,
                                         'saved': 0, 'carried': [], 'step': -1})

    def unfinished_run_checkpoint(self):
        """Auto-restore (classic): when this trainer logs into a version given by the user
        (an ``Experiment`` or logger with a version) whose run did not finish (its
        ``run_status.json`` says running, died, failed or interrupted), the path of that run's
        newest checkpoint in ``default_checkpoint_dir()``: the one with the most training
        batches done (not the newest file). ``None`` otherwise (also for a new version)."""
        if not self._run_unfinished():  # also: no status, not a run this library wrote
            return None
        folder = self.default_checkpoint_dir()
        newest, most = None, -1
        for path in glob.glob(os.path.join(glob.escape(folder), '*.ckpt')):
            done = checkpoint_io.batches_done(path)  # None: a torn or foreign file
            if done is not None and done > most:
                newest, most = path, done
        return newest

    def _install_preemption(self):
        if slurm_job_id() is None:
            return None
        signal_ = PreemptionSignal()
        return signal_ if signal_.install() else None

    def _save_point(self):
        for fn in self._hooks.hooks['on_save_point']:
            fn()
        self._decide()

    def _decide(self):
        """A decision point (fixed by the batch count, never by time): preempt if SIGUSR1
        arrived on any rank, and stop (``state.should_stop``) if any rank wants to. With
        several ranks the pending NaN flag is agreed in the same all-reduce (raised first)."""
        preemption = self._preemption
        wants = (preemption is not None and preemption.requested, self.state.should_stop)
        if self._flag_in_reads or not self._unchecked_losses:
            preempt, stop = self.world.agree(*wants)
        else:
            preempt, stop, nonfinite = self.world.agree(*wants, self._nonfinite_flag())
            self._settle_nonfinite(nonfinite)
        if preempt:
            self._preempt()
        self.state.should_stop = stop

    def _preempt(self):
        """SIGUSR1 under SLURM: durable HPC checkpoint, requeue (rank 0), then leave ``fit``
        (every rank)."""
        path = None
        if self.world.is_zero:
            existing = self._hpc_checkpoints()
            number = int(re.search(r'(\d+)\.ckpt$', existing[-1]).group(1)) + 1 if existing else 1
            path = os.path.join(self.default_checkpoint_dir(), f'hpc_ckpt_{number}.ckpt')
        path = self.world.broadcast_object(path)
        self._write_checkpoint(path, background=False, hpc=True)  # durable before the requeue
        job = slurm_job_id()
        if self.world.is_zero:
            requeue(job)
        raise _Preempted(f'saved {path} and requeued job {job}')

    def _epoch_batches(self, resume):
        """``(first batch index, iterator)`` for this epoch; on a mid-epoch resume the
        shuffle is redrawn from the saved epoch-start RNG and the done batches skipped.

        With a ``ResumableBatchSampler`` the epoch-start RNG is captured (or restored) at the
        sampler's first draw, which comes after a new loader iterator has drawn its workers'
        base seed from the global RNG, and the save point's RNG is restored once the sampler
        has made as many draws as at the save point (with workers, torch draws index lists
        ahead of the batches trained on). The resumed run then draws the same global-RNG
        stream as an uninterrupted one from the save point on."""
        loader, sampler = self._train_loader, self._resumable_sampler
        self._batches_epoch = self.state.epoch  # from here a checkpoint is mid-epoch
        self._resume_position = None  # a mid-epoch resume is taken up here
        if resume is None:
            if sampler is None:
                self._epoch_start()
            elif (sampler.epochs_started == 0 and self.state.epoch > 0
                    and getattr(loader, 'persistent_workers', False)):
                # the first epoch of a fit resumed at an epoch boundary: an uninterrupted run
                # reuses its persistent iterator here and draws no base seed, so the shuffle
                # is drawn from the state before the (new) iterator drew one
                before = checkpoint_io.capture_rng(), generator_states(loader)
                sampler.plan_epoch(at_start=lambda: self._epoch_start(before))
            else:
                sampler.plan_epoch(at_start=self._epoch_start)
            return 0, iter(loader)
        position = resume[0]
        saved_start = position['epoch_start_rng'], position['epoch_start_generators']
        self._epoch_start(saved_start)
        done = position['batches_done']
        self._window = position['window']
        state = self.state
        nb = self.nb_training_batches
        if (state.should_stop and state.epoch >= self.min_nb_epochs) or (nb is not None and done >= nb):
            self._restore_now(*resume)  # saved after the epoch's last batch was run
            return done, iter(())
        if sampler is not None:  # index work only
            draws = position.get('sampler_draws')  # None: an older checkpoint, no sampler
            sampler.plan_epoch(at_start=lambda: self._epoch_start(saved_start), skip=done,
                               at_draws=done if draws is None else draws,
                               then=lambda: self._restore_now(*resume))
            return done, iter(loader)
        # the resumed epoch's bar is already drawn: a line of its own, clear of it
        notice(f'resuming mid-epoch: the training loader is a {type(loader).__name__}, which '
               f'cannot be rebuilt for index-only skipping, so its first {done} batches are '
               f'loaded again and dropped (use a plain torch.utils.data.DataLoader to avoid '
               f'this).')
        batches = iter(loader)  # a loader we cannot rebuild: replay its batches
        for _ in itertools.islice(batches, done):
            pass
        self._restore_now(*resume)
        return done, batches

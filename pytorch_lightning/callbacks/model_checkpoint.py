"""Checkpoints at validation points (best by a metric, and an always-current last.ckpt)."""
import math
import os
import shutil
import tempfile

from ..exceptions import MisconfigurationException
from ..utilities import durable_replace
from .base import Callback
from ._monitor import Monitor


class ModelCheckpoint(Callback):
    """Saves checkpoints into the folder ``filepath``.

    - After each validation (every ``period`` epochs), when ``metrics[monitor]`` improved
      (or always, with ``save_best_only=False``): ``{prefix}epoch=<e>-step=<s>-<monitor>=<v>.ckpt``.
      With ``save_best_only`` the previous best file is removed once the new one is written.
    - ``save_last``: ``{prefix}last.ckpt`` is rewritten at every validation point, at every
      epoch end, and every ``every_n_steps`` optimizer steps (mid-epoch).

    Files are written at the next save point (see ``Callback.on_save_point``), so they hold
    every part's final state for that batch. ``filepath=None``: the trainer's default folder
    (``<experiment folder>/checkpoints``).

    ``last_path`` is the newest file this callback wrote (``last.ckpt`` when it is kept, else
    the newest best file), ``None`` before the first; ``fit`` names it when interrupted.
    """

    def __init__(self, filepath=None, monitor='val_loss', save_best_only=True, mode='auto',
                 period=1, prefix='', save_last=True, every_n_steps=None):
        if filepath is not None and not isinstance(filepath, (str, os.PathLike)):
            raise MisconfigurationException(
                f"ModelCheckpoint(filepath={filepath!r}): expected the folder to save into.")
        if os.path.splitext(os.fspath(filepath or ''))[1] == '.ckpt':
            raise MisconfigurationException(
                f"ModelCheckpoint(filepath={filepath!r}) is a folder, not a file name: "
                f"pass {os.path.dirname(os.fspath(filepath)) or '.'!r} and use prefix= to name files.")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise MisconfigurationException(
                f"ModelCheckpoint(period={period!r}): expected an int >= 1 (epochs between saves).")
        if every_n_steps is not None and (isinstance(every_n_steps, bool)
                                          or not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise MisconfigurationException(
                f"ModelCheckpoint(every_n_steps={every_n_steps!r}): expected None or an int >= 1.")
        if every_n_steps is not None and not save_last:
            raise MisconfigurationException(
                f"ModelCheckpoint(every_n_steps={every_n_steps}, save_last=False): every_n_steps "
                f"refreshes {prefix}last.ckpt, which save_last=False turns off, so it would "
                f"save nothing. Pass save_last=True, or drop every_n_steps.")
        self.filepath = None if filepath is None else os.path.expanduser(os.fspath(filepath))
        self._default_folder = filepath is None
        self.monitor = Monitor('ModelCheckpoint', monitor, mode, trainer_arg='checkpoint_callback',
                               off_notice='keeps no best checkpoint (last.ckpt is still written)')
        self.save_best_only, self.period, self.prefix = save_best_only, period, prefix
        self.save_last, self.every_n_steps = save_last, every_n_steps
        self.best = None
        self.best_path = None
        self.last_path = None
        self._want_best = None    # value to save as best at the next save point
        self._want_last = False
        self._last_step_saved = 0
        self._last_batches_saved = -1

    def on_fit_setup(self, trainer, module):
        """Each fit is a new run: no best yet, and the default folder is the new run's."""
        if self._default_folder:
            self.filepath = None
        self.best = self.best_path = self._want_best = self.last_path = None
        self._want_last = False
        self._last_step_saved, self._last_batches_saved = 0, -1
        self.monitor.reset(quiet=not getattr(trainer, 'is_global_zero', True))

    def _folder(self, trainer):
        if self.filepath is None:  # resolved at the first save: fit start never waits for it
            self.filepath = trainer.default_checkpoint_dir()
        return self.filepath

    def on_validation_end(self, trainer, module, metrics):
        if (trainer.state.epoch + 1) % self.period:
            return
        self._want_last = self.save_last
        value = self.monitor.read(metrics)
        if value is None:
            return
        if not self.save_best_only or self.monitor.improved(value, self.best):
            self._want_best = value

    def on_epoch_end(self, trainer, module):
        # not needed when this batch's validation point already wrote last.ckpt (a resume
        # from that one goes straight to the epoch's end)
        if self._last_batches_saved != trainer.state.total_batches:
            self._want_last = self._want_last or self.save_last

    def on_save_point(self, trainer, module):
        if self._want_best is None and not self._want_last and not self.every_n_steps:
            return  # the common case, once per batch
        step = trainer.state.global_step
        if self.every_n_steps and step - self._last_step_saved >= self.every_n_steps:
            self._want_last = True
        best_path, after = None, None
        if self._want_best is not None:
            value, self._want_best = self._want_best, None
            best_path, after = self._new_best(trainer, value)
        if self._want_last and self.save_last:
            self._want_last = False
            self._last_step_saved, self._last_batches_saved = step, trainer.state.total_batches
            last = os.path.join(self._folder(trainer), f'{self.prefix}last.ckpt')
            if best_path is not None:  # same content: one write, the best file is a link to it
                after = self._link_then(last, best_path, after)
            trainer.save_checkpoint(last, then=after, background=True)
            self.last_path = last
        elif best_path is not None:
            trainer.save_checkpoint(best_path, then=after, background=True)
            self.last_path = best_path

    @staticmethod
    def _link_then(source, target, after):
        def link():
            try:
                os.link(source, target)  # last.ckpt is later replaced, never rewritten in place
            except OSError:  # file systems without hard links: a copy, made durable and
                # renamed into place like every checkpoint write, so a copy cut short (full
                # disk, kill, power loss) never sits under a checkpoint's name
                fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(target)}.{os.getpid()}.',
                                           suffix='.tmp', dir=os.path.dirname(target))
                os.close(fd)
                try:
                    shutil.copyfile(source, tmp)
                    durable_replace(tmp, target)
                except BaseException:
                    os.remove(tmp)
                    raise
            if after is not None:
                after()
        return link

    def _new_best(self, trainer, value):
        """Path for a new best-by-metric file (state updated first, so the file holds it) and
        what to do once it is in place (remove the previous best)."""
        state = trainer.state
        shown = 'nan' if math.isnan(value) else f'{value:.4f}'
        name = f'{self.prefix}epoch={state.epoch}-step={state.global_step}-{self.monitor.key}={shown}.ckpt'
        path = os.path.join(self._folder(trainer), name)
        previous = self.best_path
        if self.monitor.improved(value, self.best):
            self.best, self.best_path = value, path
        # a best file restored from a run in another folder (a resume into a new filepath)
        # belongs to that run: it is never deleted from here
        ours = previous is not None and (os.path.realpath(os.path.dirname(previous))
                                         == os.path.realpath(os.path.dirname(path)))
        if not (self.save_best_only and self.best_path == path and ours and previous != path):
            return path, None

        def drop():  # only once the new best is safely in place
            if os.path.exists(previous):
                os.remove(previous)
        return path, drop

    def state_dict(self):
        return {'best': self.best, 'best_path': self.best_path, **self.monitor.state_dict(),
                'last_step_saved': self._last_step_saved, 'filepath': self.filepath}

    def load_state_dict(self, state):
        if self.monitor.load_state_dict(state):  # the best of another metric is not ours
            self.best, self.best_path = state['best'], state['best_path']
        self._last_step_saved = state['last_step_saved']
        if self.filepath is None:
            self.filepath = state['filepath']

"""The tqdm progress bar, as a callback. Redraws are time-throttled; tensors become numbers
only when it redraws."""
import time

from .base import Callback


class ProgressBar(Callback):
    """One tqdm bar per fit: epoch, batch, running loss, the step's dict, validation metrics.

    ``refresh_interval`` is the least time in seconds between two redraws;
    ``position`` is tqdm's line (``Trainer(process_position=...)``).
    """

    def __init__(self, refresh_interval=0.2, position=0):
        self.refresh_interval = refresh_interval
        self.position = position
        self._bar = None
        self._count = 0
        self._next_draw = 0.0

    def on_fit_start(self, trainer, module):
        from tqdm.auto import tqdm
        self._bar = tqdm(total=None, position=self.position, dynamic_ncols=True,
                         leave=True, unit='batch')

    def on_epoch_start(self, trainer, module):
        self._count = 0
        self._bar.reset(total=trainer.nb_batches_this_epoch)
        self._bar.set_description(f'Epoch {trainer.state.epoch + 1}')

    def _tick(self, trainer):
        self._count += 1
        now = time.perf_counter()
        if now >= self._next_draw:
            self._draw(trainer, now)

    def _draw(self, trainer, now):
        self._next_draw = now + self.refresh_interval
        bar = self._bar
        bar.n = self._count
        bar.set_postfix(trainer.tqdm_metrics, refresh=False)
        bar.refresh()

    def on_batch_end(self, trainer, module):
        self._tick(trainer)

    def on_validation_batch_end(self, trainer, module):
        if trainer.state.stage != 'sanity_check':
            self._tick(trainer)

    def on_epoch_end(self, trainer, module):
        self._draw(trainer, time.perf_counter())

    def on_fit_end(self, trainer, module):
        if self._bar is not None:
            self._draw(trainer, time.perf_counter())
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer, module, error):
        self.on_fit_end(trainer, module)  # the bar shows where it stopped

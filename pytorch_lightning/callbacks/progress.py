"""The tqdm progress bar, as a callback. Redraws are time-throttled; tensors become numbers
only when it redraws, and on an accelerator without making the host wait for the device."""
import math
import numbers
import time

from ..exceptions import MisconfigurationException
from ..utilities import NumbersRead
from .base import Callback


class ProgressBar(Callback):
    """One tqdm bar per fit, reset at each epoch: ``Epoch <n>`` (0-based, like
    ``trainer.current_epoch``, the postfix's ``epoch`` and checkpoint names), the batch count
    and ``trainer.tqdm_metrics`` as the postfix.

    ``refresh_interval`` is the least time in seconds between two redraws while batches run;
    ``position`` is tqdm's line (``Trainer(process_position=...)``). The bar appears at the
    first epoch start (not during the sanity check), and every state is drawn once: the end
    of an epoch is drawn only if something changed since the last redraw, and the bar's
    final line is not drawn again when it closes, so a log file gets no repeated lines.

    Where reading a number from the device waits for it (``trainer.device.cheap_item`` is
    false: a GPU), a redraw mid-epoch never waits: it starts copying the numbers to the host
    (``NumbersRead``) and shows those of the last copy that has arrived, so the postfix is
    about one redraw old. The redraws at the end of an epoch and of the fit read at once.
    """

    def __init__(self, refresh_interval=0.2, position=0):
        if (isinstance(refresh_interval, bool) or not isinstance(refresh_interval, numbers.Real)
                or not math.isfinite(refresh_interval) or refresh_interval < 0):
            raise MisconfigurationException(
                f"ProgressBar(refresh_interval={refresh_interval!r}): expected the least "
                f"number of seconds between two redraws, a finite number >= 0 (0 redraws "
                f"after every batch), such as 0.2.")
        self.refresh_interval = refresh_interval
        self.position = position
        self._bar = None
        self._count = 0
        self._next_draw = 0.0
        self._stale = False  # something changed since the last redraw
        self._read = None  # the numbers being copied from the device (NumbersRead)
        self._numbers = {}  # the numbers of the last copy that arrived

    def on_epoch_start(self, trainer, module):
        # after a mid-epoch resume the count starts at what the epoch had done (also tqdm's
        # `initial`, so the rate and the time left count only the batches run from here on)
        self._count = done = trainer.nb_batches_done_at_epoch_start
        self._stale = False
        self._read, self._numbers = None, {}
        total, label = trainer.nb_batches_this_epoch, f'Epoch {trainer.state.epoch}'
        if self._bar is None:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=done, desc=label, position=self.position,
                             dynamic_ncols=True, leave=True, unit='batch')
            return
        # one redraw for the new epoch (reset draws): label first, last epoch's postfix off.
        # (A resumed epoch is a fit's first, whose bar is new: `done` is 0 here.)
        self._bar.set_description(label, refresh=False)
        self._bar.set_postfix_str('', refresh=False)
        self._bar.initial = done
        self._bar.reset(total=total)

    def _tick(self, trainer):
        self._count += 1
        self._stale = True
        now = time.perf_counter()
        if now >= self._next_draw:
            self._draw(trainer, now)

    def _draw(self, trainer, now, final=False):
        self._next_draw = now + self.refresh_interval
        self._stale = False
        bar = self._bar
        bar.n = self._count
        bar.set_postfix(self._postfix(trainer, final), refresh=False)
        bar.refresh()

    def _postfix(self, trainer, final):
        if final or trainer.device.cheap_item:
            self._read = None
            return trainer.tqdm_metrics
        if self._read is not None and self._read.ready():
            self._numbers, self._read = self._read.numbers(), None
        if self._read is None:
            self._read = NumbersRead(trainer.bar_values())
        return trainer.bar_postfix(self._numbers)

    def on_batch_end(self, trainer, module):
        self._tick(trainer)

    def on_validation_batch_end(self, trainer, module):
        if trainer.state.stage != 'sanity_check':
            self._tick(trainer)

    def on_validation_end(self, trainer, module, metrics):
        self._stale = True  # the postfix shows the new metrics at the next redraw

    def on_epoch_end(self, trainer, module):
        if self._stale:
            self._draw(trainer, time.perf_counter(), final=True)

    def on_fit_end(self, trainer, module):
        bar = self._bar
        if bar is None:  # fit ended before the first epoch
            return
        if self._stale:
            self._draw(trainer, time.perf_counter(), final=True)
        self._bar = None
        if self.position == 0:
            # The final state is on this line now; tqdm's close() would draw it once more (a
            # repeated line in a log file). Its display() writes through the status printer
            # `sp`: with one that writes nothing, close() only ends the line and releases the
            # bar. (A bar on another line is left to tqdm, which moves it to this line.)
            bar.sp = lambda text: None
        bar.close()

    def on_exception(self, trainer, module, error):
        self.on_fit_end(trainer, module)  # the bar shows where it stopped

"""What ModelCheckpoint and EarlyStopping share: reading one metric and comparing it."""
import math
import numbers

import torch

from ..exceptions import MisconfigurationException
from ..utilities import to_number


def notice(message):
    """Print ``message`` on stdout as a line of its own: tqdm clears a live progress bar,
    prints, and draws the bar again (a plain ``print`` would land in the middle of it)."""
    from tqdm.auto import tqdm
    tqdm.write(message)


class Monitor:
    """Watches ``metrics[key]`` in ``mode`` ('min', 'max' or 'auto': names containing 'acc'
    are maximised, everything else minimised; the choice is printed once, see ``notice``).

    ``required=False`` (the trainer's default callbacks) turns a missing key into a printed
    notice that disables the owner; otherwise it is a ``MisconfigurationException``.
    """

    def __init__(self, owner, key, mode, min_delta=0.0, trainer_arg='', off_notice='is off'):
        if mode not in ('auto', 'min', 'max'):
            raise MisconfigurationException(
                f"{owner}(mode={mode!r}): use 'min' (lower is better), 'max' (higher is better) "
                f"or 'auto' (max for names containing 'acc', min otherwise).")
        self.owner, self.key, self.min_delta = owner, key, abs(min_delta)
        self.trainer_arg, self.off_notice = trainer_arg, off_notice
        self.mode = self._initial_mode = mode
        self.required = True
        self.disabled = False
        self.quiet = False

    def reset(self, quiet=False):
        """Forget what the last fit found out (inferred mode, a missing key). ``quiet``: print
        no notices in this fit (ranks other than 0 decide the same, silently)."""
        self.mode, self.disabled, self.quiet = self._initial_mode, False, quiet

    def state_dict(self):
        """What the owner's checkpoint state keeps of this monitor: the key, the mode in
        use (an inferred 'auto' stays decided) and whether it turned itself off."""
        return {'monitor': self.key, 'mode': self.mode, 'disabled': self.disabled}

    def load_state_dict(self, state):
        """Take back ``state_dict()``; returns whether ``state`` watched this same key
        (checkpoints written before the key was kept count as the same). A checkpoint of
        another metric restores nothing, so its best value is not compared with this one's,
        in its mode. A monitor that is required is never turned off by a checkpoint of the
        trainer's default one, which turned itself off on a missing key."""
        if state.get('monitor', self.key) != self.key:
            return False
        self.mode = state['mode']
        self.disabled = state['disabled'] and not self.required
        return True

    def _notice(self, message):
        if not self.quiet:
            notice(message)

    def resolve_mode(self):
        if self.mode == 'auto':
            self.mode = 'max' if 'acc' in self.key.lower() else 'min'
            self._notice(f"{self.owner}: monitoring {self.key!r} in {self.mode!r} mode (inferred from "
                   f"the name; pass mode='min' or mode='max' to choose).")
        return self.mode

    def read(self, metrics):
        """The monitored value as a float, or ``None`` when disabled."""
        if self.disabled:
            return None
        if self.key not in metrics:
            available = sorted(metrics)
            if self.required:
                self._raise_missing(metrics)
            self.disabled = True
            self._notice(f"{self.owner}: validation_end returned no {self.key!r} (keys: {available}), "
                   f"so the default {self.owner} {self.off_notice}. Pass {self.trainer_arg}="
                   f"{self.owner}(monitor=...) to the Trainer to use another metric.")
            return None
        self.resolve_mode()
        return self._number(metrics[self.key])

    def check(self, metrics):
        """Raise what ``read(metrics)`` would raise, changing nothing: the trainer calls it
        with the sanity check's metrics, so a monitored key that is missing (when required)
        or not a number is reported before the first training batch."""
        if self.disabled:
            return
        if self.key in metrics:
            self._number(metrics[self.key])
        elif self.required:
            self._raise_missing(metrics)

    def _raise_missing(self, metrics):
        raise MisconfigurationException(
            f"{self.owner}(monitor={self.key!r}): validation_end returned no "
            f"{self.key!r}; available keys: {sorted(metrics)}. Return it from validation_end "
            f"or pass monitor= one of those keys.")

    def _number(self, value):
        """``value`` as a float; a ``MisconfigurationException`` when it is not a number or a
        one-element tensor (a per-batch list, a vector, a string)."""
        number = to_number(value)
        if not isinstance(number, numbers.Real):
            if isinstance(value, torch.Tensor):
                received = f'a Tensor of shape {tuple(value.shape)}'
            else:
                received = f'{type(value).__name__} ({value!r:.60})'
            raise MisconfigurationException(
                f"{self.owner}(monitor={self.key!r}): validation_end returned {self.key!r} as "
                f"{received}; a monitored metric must be a number or a one-element tensor. "
                f"Reduce it in validation_end, e.g. `{self.key!r}: torch.stack(losses).mean()`.")
        return float(number)

    def improved(self, value, best):
        if best is None:
            return not math.isnan(value)
        if self.mode == 'min':
            return value < best - self.min_delta
        return value > best + self.min_delta

"""Stop training when a validation metric stops improving."""
from ..exceptions import MisconfigurationException
from .base import Callback
from ._monitor import Monitor


class EarlyStopping(Callback):
    """After each validation, compare ``metrics[monitor]`` with the best so far; after
    ``patience`` validations without an improvement larger than ``min_delta``, set
    ``trainer.state.should_stop`` (the trainer still runs ``min_nb_epochs`` epochs)."""

    def __init__(self, monitor='val_loss', min_delta=0.0, patience=3, mode='auto'):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise MisconfigurationException(
                f"EarlyStopping(patience={patience!r}): expected an int >= 0, the validation "
                f"runs without improvement after which training stops.")
        self.monitor = Monitor('EarlyStopping', monitor, mode, min_delta,
                               trainer_arg='early_stop_callback', off_notice='is off')
        self.patience = patience
        self.best = None
        self.wait = 0
        self.stopped_epoch = None

    def on_fit_setup(self, trainer, module):
        self.best, self.wait, self.stopped_epoch = None, 0, None
        self.monitor.reset(quiet=not getattr(trainer, 'is_global_zero', True))

    def on_validation_end(self, trainer, module, metrics):
        value = self.monitor.read(metrics)
        if value is None:
            return
        if self.monitor.improved(value, self.best):
            self.best, self.wait = value, 0
            if self.stopped_epoch is not None:  # our earlier request no longer holds
                self.stopped_epoch = None
                trainer.state.should_stop = False
            return
        self.wait += 1
        # asks (again) whenever the flag is down: someone may have cleared an earlier request
        if self.wait >= self.patience and not trainer.state.should_stop:
            self.stopped_epoch = trainer.state.epoch
            trainer.state.should_stop = True

    def state_dict(self):
        return {'best': self.best, 'wait': self.wait, 'stopped_epoch': self.stopped_epoch,
                **self.monitor.state_dict()}

    def load_state_dict(self, state):
        if self.monitor.load_state_dict(state):  # another metric's counters are not ours
            self.best, self.wait = state['best'], state['wait']
            self.stopped_epoch = state['stopped_epoch']

"""The precision part: the autocast context, loss scaling, unscaling before anything reads
gradients, and the scaler's state. The loop calls these and never asks which one it has."""
import contextlib

import torch


class FullPrecision:
    """float32: no autocast, no scaler. ``step`` hands the closure to the optimizer, so
    closure optimizers (LBFGS) work like SGD."""

    dtype = None
    scaler = None
    _no_autocast = contextlib.nullcontext()  # reusable: entering it does nothing

    def autocast(self):
        return self._no_autocast

    def scale(self, loss):
        """The loss backward must run on: ``loss`` itself here (what a module's ``backward``
        override receives)."""
        return loss

    def backward(self, loss):
        loss.backward()

    def unscale(self, optimizer):
        """Make ``optimizer``'s gradients true gradients (nothing to do here)."""

    def step(self, optimizer, closure=None):
        """One optimizer step; ``closure`` (re)computes the loss and gradients."""
        return optimizer.step() if closure is None else optimizer.step(closure)

    def update(self):
        """After every optimizer of a batch stepped."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __repr__(self):
        return f'{type(self).__name__}()'


class MixedPrecision(FullPrecision):
    """``torch.autocast`` to ``dtype`` on ``device_type``. float16 adds a ``GradScaler``: the
    loss is scaled before backward, gradients are unscaled once per accumulation window
    (``unscale``, before clipping and anything else that reads them), and a step with inf/NaN
    gradients is skipped by the scaler (``global_step`` still counts it)."""

    def __init__(self, device_type, dtype):
        self.device_type, self.dtype = device_type, dtype
        self.scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None
        self._unscaled = set()

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scale(self, loss):
        """float16: ``loss`` multiplied by the scaler's scale (``unscale`` divides the
        gradients by it again); bfloat16: ``loss`` itself."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def backward(self, loss):
        self.scale(loss).backward()

    def unscale(self, optimizer):
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def step(self, optimizer, closure=None):
        if self.scaler is None:
            return super().step(optimizer, closure)
        # a GradScaler takes no closure: run it here (it unscales), then step through it
        loss = None if closure is None else closure()
        self.unscale(optimizer)
        self.scaler.step(optimizer)
        return loss

    def update(self):
        if self.scaler is not None:
            self.scaler.update()
            self._unscaled.clear()

    def state_dict(self):
        return {} if self.scaler is None else {'scaler': self.scaler.state_dict()}

    def load_state_dict(self, state):
        if self.scaler is not None and state.get('scaler'):
            self.scaler.load_state_dict(state['scaler'])

    def __repr__(self):
        return f'{type(self).__name__}({self.device_type}, {self.dtype})'

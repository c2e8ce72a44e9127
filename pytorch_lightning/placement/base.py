"""Where the model runs. The loop only calls these methods; it never branches on devices."""


class Placement:
    """Interface every placement implements.

    ``transfers_batches``: whether ``to_device`` must be called (False lets the loop skip it).
    ``cheap_item``: whether reading a scalar to the host costs no device sync (CPU), so the
    loop may check every loss for NaN/inf; otherwise checks happen when metrics are read.
    """

    name = 'base'
    transfers_batches = False
    cheap_item = True

    def setup(self, module):
        """Move ``module`` to the device; return the module the loop should call."""
        return module

    def to_device(self, batch):
        """Return ``batch`` with its tensors on the device."""
        return batch

    def backward(self, loss):
        """Backpropagate ``loss`` (a mixed-precision placement scales it first)."""
        loss.backward()

    def step(self, optimizer):
        """Take ``optimizer``'s step (a mixed-precision placement unscales and skips
        steps with inf/NaN gradients here). Not used when the module overrides
        ``optimizer_step``: that override takes the step itself."""
        optimizer.step()

    def teardown(self, module):
        """Undo what ``setup`` did that must not outlive fit."""

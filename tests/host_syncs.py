"""Host reads per training batch, attributed: the GPU test and the GPU benchmark count torch's
sync warnings with it, the CPU test counts ``Tensor.item``/``tolist`` calls on the forced lazy
path with it. Imported by tests and ``benchmarks/gpu_overhead.py``; not a test module."""
import contextlib
import warnings

import torch

from pytorch_lightning.callbacks import Callback


class ReadsPerBatch(Callback):
    """Counts, per training batch, the host syncs (``count()``: how many happened so far) and
    the reads the trainer means to make (calls of ``trainer.read_numbers``: a log row, a bar
    redraw, a NaN-flag check; each one transfer per device).

    Window ``k`` runs from batch ``k``'s ``on_batch_start`` to batch ``k + 1``'s: batch ``k``'s
    step, backward and optimizer step, its ``on_batch_end`` hooks (the log row, the bar) and
    flag check, and the transfer of batch ``k + 1`` to the device. ``windows()`` returns
    ``(syncs, reads)`` per complete window. Put it first in ``callbacks``: the trainer runs user
    callbacks before its own, so the window opens before any built-in hook of the batch.
    """

    def __init__(self, count):
        self.count = count
        self._reads = 0
        self._marks = []

    def on_fit_start(self, trainer, module):
        read_numbers = trainer.read_numbers

        def counted(metrics):
            self._reads += 1
            return read_numbers(metrics)
        trainer.read_numbers = counted  # the loop and the callbacks call it through trainer

    def on_batch_start(self, trainer, module, batch):
        self._marks.append((self.count(), self._reads))

    def on_fit_end(self, trainer, module):
        trainer.__dict__.pop('read_numbers', None)  # the method again

    def on_exception(self, trainer, module, error):
        self.on_fit_end(trainer, module)

    def windows(self):
        return [(syncs - syncs0, reads - reads0) for (syncs0, reads0), (syncs, reads)
                in zip(self._marks, self._marks[1:])]


@contextlib.contextmanager
def cuda_sync_warnings():
    """Inside: every host sync torch notices is recorded; yields ``count()``, how many so far.
    ``torch.cuda.set_sync_debug_mode('warn')`` makes torch warn "called a synchronizing CUDA
    operation" at each blocking copy between host and device (``.item()``, ``.tolist()``,
    ``.cpu()``, a blocking ``.to('cuda')`` from pageable memory) and each stream sync."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        looked_at, syncs = 0, 0

        def count():  # reads only the warnings that came since the last call
            nonlocal looked_at, syncs
            syncs += sum('synchronizing' in str(w.message) for w in caught[looked_at:])
            looked_at = len(caught)
            return syncs
        torch.cuda.set_sync_debug_mode('warn')
        try:
            yield count
        finally:
            torch.cuda.set_sync_debug_mode('default')

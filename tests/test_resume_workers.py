"""Exact resume with DataLoader worker processes (``num_workers=2``, with and without
``persistent_workers``) after a real SIGKILL.

torch's multi-process loader asks the batch sampler for an iterator twice, draws its workers'
base seed from the global RNG before the sampler draws its shuffle, reuses a persistent
iterator without drawing that seed again, and draws index lists ahead of the batches the loop
has trained on. The resumed run must still train on the same batches in the same order with the
same main-process RNG stream (the model has dropout and draws numpy/python randomness in the
main process), so its final parameters and metric rows equal an uninterrupted run's with the
same loader configuration.
"""
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pytorch_lightning import Trainer, checkpoint_io
from pytorch_lightning.callbacks import Callback

from models import TinyModel
from test_resume import SCRIPT, assert_same_run, rows

LOADERS = {
    'workers': ['--num-workers', 2],
    'persistent': ['--num-workers', 2, '--persistent-workers'],
}


def run(save_dir, out, *args, expect=0):
    """Run the script with its output in a file, not a pipe: after a SIGKILL its orphaned
    worker processes keep a pipe open until they notice the dead parent (within seconds; they
    then exit by themselves), and the log writer must be left to finish saving."""
    os.makedirs(save_dir, exist_ok=True)
    log = os.path.join(save_dir, 'script_output.txt')
    with open(log, 'a') as output:
        code = subprocess.run([sys.executable, SCRIPT, str(save_dir), str(out), *map(str, args)],
                              stdout=output, stderr=subprocess.STDOUT, timeout=300).returncode
    with open(log) as output:
        assert code == expect, output.read()


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    """The uninterrupted run of each loader configuration, computed on first use."""
    cache = {}

    def get(loader):
        if loader not in cache:
            folder = tmp_path_factory.mktemp(f'full_{loader}')
            run(folder, folder / 'out.pt', *LOADERS[loader])
            cache[loader] = (torch.load(folder / 'out.pt'),
                             rows(folder / 'lightning_logs' / 'version_0'))
        return cache[loader]
    return get


# 11 batches per epoch, windows of 3, validation after batches 5 and 10 of each epoch.
@pytest.mark.parametrize('kill_at', [
    5,    # epoch 0, right after a validation point: the loader's first iterator resumes
    13,   # early in epoch 1, from the save point after epoch 0's last batch: a persistent
          # loader would have reused its iterator (no new base-seed draw) at epoch 1
    19,   # mid-epoch 1: the resumed run builds a new iterator where the uninterrupted one
          # reused its persistent one
])
@pytest.mark.parametrize('loader', sorted(LOADERS))
def test_sigkill_then_resume_with_workers_is_bit_exact(tmp_path, uninterrupted, loader, kill_at):
    out = tmp_path / 'out.pt'
    run(tmp_path, out, '--kill-at', kill_at, *LOADERS[loader], expect=-signal.SIGKILL)
    assert not out.exists()
    last = tmp_path / 'ckpt' / 'last.ckpt'
    saved_at = checkpoint_io.load(last)['lightning']['trainer_state']['total_batches']
    assert 0 < saved_at <= kill_at
    run(tmp_path, out, '--resume', last, *LOADERS[loader])
    assert_same_run(torch.load(out), uninterrupted(loader),
                    tmp_path / 'lightning_logs' / 'version_0')


class Recorded(TinyModel):
    """Dropout in the main process, a shuffled loader with persistent workers, and a record
    of every training batch (its first sample) and of the dropout noise each step drew."""

    def __init__(self):
        super().__init__(n=48)
        self.drop = nn.Dropout(0.5)
        self.seen = []

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        noise = torch.rand(())
        self.seen.append((self.trainer.current_epoch, batch_nb, x[0, 0].item(), noise.item()))
        loss = nn.functional.cross_entropy(self(self.drop(x) + noise), y)
        return loss, {}

    @property
    def tng_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(48, 32, generator=gen)
        return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8, shuffle=True,
                          num_workers=2, persistent_workers=True)


def test_resume_at_epoch_end_with_persistent_workers_is_exact(quiet, tmp_path):
    """A checkpoint taken at an epoch's end (``epoch_complete``): the uninterrupted run's
    persistent iterator draws the next epoch's shuffle without a new base seed, and so must
    the resumed run, whose loader starts its workers only then."""
    path = tmp_path / 'epoch_end.ckpt'

    class SaveAtEpochEnd(Callback):
        def on_save_point(self, trainer, module):
            if trainer.current_epoch == 1 and trainer._epoch_done:
                trainer.save_checkpoint(path)

    def fit(**kwargs):
        torch.manual_seed(0)
        model = Recorded()
        Trainer(**quiet(max_nb_epochs=4, early_stop_callback=False, checkpoint_callback=False,
                        nb_sanity_val_steps=0, **kwargs)).fit(model)
        return model

    full = fit(callbacks=[SaveAtEpochEnd()])
    assert checkpoint_io.load(path)['lightning']['position']['epoch_complete']
    resumed = fit(resume_from_checkpoint=path)
    assert resumed.seen == [row for row in full.seen if row[0] >= 2]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

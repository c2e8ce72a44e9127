"""Small gaps found by the bug hunts: each test failed before its fix."""
import os
import re

import pytest
import torch
from torch import nn

from pytorch_lightning import MisconfigurationException, Trainer
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.transfer import move_to_device

from models import TinyModel
from test_devices_loop import FakeTwoGPUs
from test_optimizer_dicts import GAN
from test_tbptt import Echo


# ------------------------------------------- 1: a schedule of ones is no accumulation
class LBFGSModel(TinyModel):
    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=2, history_size=2)


@pytest.mark.parametrize('model_cls, extra', [
    (LBFGSModel, {}), (GAN, {}), (Echo, {'truncated_bptt_steps': 6})],
    ids=['lbfgs', 'frequencies', 'tbptt'])
def test_accumulation_schedule_of_ones_is_allowed_where_accumulation_is_not(
        quiet, model_cls, extra):
    """``{0: 1}`` (or ``{3: 1}``) accumulates nothing in any epoch, like ``1``: LBFGS,
    optimizer frequencies and truncated BPTT accept it. A schedule that reaches 2 is
    still refused."""
    for ones in ({0: 1}, {3: 1}):
        trainer = Trainer(**quiet(accumulate_grad_batches=ones, nb_sanity_val_steps=0, **extra))
        trainer.fit(model_cls())
        assert trainer.state.total_batches > 0
    with pytest.raises(MisconfigurationException, match=r'accumulate_grad_batches=\{0: 1, 1: 2\}'):
        Trainer(**quiet(accumulate_grad_batches={0: 1, 1: 2}, **extra)).fit(model_cls())


# ------------------------------------------------------ 2: TestTubeLogger and '~'
def test_test_tube_logger_expands_a_leading_tilde(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import TestTubeLogger
    monkeypatch.setenv('HOME', str(tmp_path))
    logger = TestTubeLogger(save_dir='~/runs', name='exp')
    assert logger.save_dir == str(tmp_path / 'runs')
    assert logger.version == 0
    assert (tmp_path / 'runs' / 'exp').is_dir() and not os.path.exists('~')


# ------------------------------------- 3: a requeue restores the further checkpoint
class SavesHPCAt(Callback):
    """Writes ``hpc_ckpt_1.ckpt`` at the save point of the ``at``-th training batch, as a
    preemption would have (an older HPC checkpoint than the run's last.ckpt)."""

    def __init__(self, at):
        self.at = at

    def on_save_point(self, trainer, module):
        if trainer.state.total_batches == self.at:
            trainer.save_checkpoint(os.path.join(trainer.default_checkpoint_dir(),
                                                 'hpc_ckpt_1.ckpt'))


class CountsBatches(TinyModel):
    def __init__(self):
        super().__init__()
        self.batches, self.hpc_loads = 0, 0

    def training_step(self, data_batch, batch_nb):
        self.batches += 1
        return super().training_step(data_batch, batch_nb)

    def on_hpc_load(self, checkpoint):
        self.hpc_loads += 1


def test_requeue_restores_last_ckpt_when_it_is_further_than_the_hpc_checkpoint(
        quiet, tmp_path, monkeypatch, capsys):
    """A node failure requeues the job without SIGUSR1: the newest HPC checkpoint is from
    an earlier preemption, and last.ckpt (written later) holds more batches. The requeued
    job continues from last.ckpt."""
    folder = tmp_path / 'checkpoints'
    kwargs = dict(early_stop_callback=False, nb_sanity_val_steps=0)
    # 8 batches an epoch: hpc_ckpt_1 after 3, last.ckpt at the end of epoch 0 (8 batches)
    Trainer(**quiet(max_nb_epochs=1, callbacks=[SavesHPCAt(3)], **kwargs)).fit(TinyModel())
    assert {'hpc_ckpt_1.ckpt', 'last.ckpt'} <= set(os.listdir(folder))

    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    model = CountsBatches()
    trainer = Trainer(**quiet(max_nb_epochs=2, **kwargs))
    trainer.fit(model)
    assert re.search(r'resumed from \S*last\.ckpt', capsys.readouterr().out)
    assert model.batches == 8 and trainer.state.total_batches == 16
    assert model.hpc_loads == 0  # on_hpc_load is for a restored HPC checkpoint


def test_requeue_prefers_the_hpc_checkpoint_further_than_last_ckpt(
        quiet, tmp_path, monkeypatch, capsys):
    """An HPC checkpoint that holds more batches than last.ckpt is the one restored, and
    ``on_hpc_load`` runs for it."""
    folder = tmp_path / 'checkpoints'
    kwargs = dict(early_stop_callback=False, nb_sanity_val_steps=0)
    # epoch 0 writes last.ckpt (8 batches); hpc_ckpt_1 after 11 batches; then last.ckpt is
    # put back to its epoch-0 copy
    Trainer(**quiet(max_nb_epochs=1, **kwargs)).fit(TinyModel())
    os.replace(folder / 'last.ckpt', tmp_path / 'epoch0.ckpt')
    Trainer(**quiet(max_nb_epochs=2, callbacks=[SavesHPCAt(11)], checkpoint_callback=False,
                    resume_from_checkpoint=tmp_path / 'epoch0.ckpt', **kwargs)).fit(TinyModel())
    os.replace(tmp_path / 'epoch0.ckpt', folder / 'last.ckpt')
    capsys.readouterr()

    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    model = CountsBatches()
    trainer = Trainer(**quiet(max_nb_epochs=2, **kwargs))
    trainer.fit(model)
    assert re.search(r'resumed from \S*hpc_ckpt_1\.ckpt', capsys.readouterr().out)
    assert model.batches == 5 and trainer.state.total_batches == 16 and model.hpc_loads == 1


# ------------------------------------------ 4: a copied best checkpoint is fsynced
def test_best_checkpoint_copied_without_hard_links_is_fsynced(quiet, tmp_path, monkeypatch):
    """Where hard links fail, the best file is a copy of last.ckpt: the copy is fsynced
    (and its folder after the rename), like every other checkpoint write."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f'/proc/self/fd/{fd}'))
        real_fsync(fd)

    def no_link(source, target):
        raise OSError('hard links not supported here')

    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'link', no_link)
    folder = tmp_path / 'ckpts'
    checkpoint = ModelCheckpoint(filepath=folder, monitor='val_loss')
    trainer = Trainer(**quiet(checkpoint_callback=checkpoint, early_stop_callback=False))
    trainer.fit(TinyModel())
    best = os.path.basename(checkpoint.best_path)
    assert os.path.isfile(checkpoint.best_path) and not os.path.samefile(
        checkpoint.best_path, folder / 'last.ckpt')
    copies = [p for p in synced if os.path.basename(p).startswith(f'.{best}.')]
    assert copies, synced  # the copy's temporary file, fsynced before the rename
    assert synced.count(str(folder)) >= 2  # the folder after last.ckpt's and the copy's rename


# --------------------------------------------------------------- 5: move_to_device
class HasTo:
    """A class with a ``to`` method: the class object itself must travel as it is."""

    def to(self, device):
        return self


def test_move_to_device_returns_classes_as_they_are():
    batch = {'x': torch.ones(2), 'kind': HasTo, 'dtype': torch.float32}
    moved = move_to_device(batch, 'cpu')
    assert moved['kind'] is HasTo and moved['dtype'] is torch.float32
    assert isinstance(move_to_device([HasTo()], 'cpu')[0], HasTo)  # instances still move


def test_move_to_device_moves_a_shared_tensor_once():
    """The same tensor twice in a batch is copied once, so both places share the copy (the
    'meta' device copies on the CPU-only machine too)."""
    shared, other = torch.ones(3), torch.zeros(3)
    moved = move_to_device({'a': shared, 'b': [shared, other], 'c': (shared,)}, 'meta')
    assert moved['a'].device.type == 'meta'
    assert moved['a'] is moved['b'][0] is moved['c'][0]
    assert moved['b'][1] is not moved['a']
    again = move_to_device(shared, 'meta')
    assert again is not moved['a']  # the memo lives for one call only


# ------------------------------------- 6: DataParallel and a loss of shape (1,)
class UnsqueezedLoss(TinyModel):
    """The classic DataParallel idiom: ``return loss.unsqueeze(0)``."""

    def training_step(self, data_batch, batch_nb):
        loss, logs = super().training_step(data_batch, batch_nb)
        return {'loss': loss.unsqueeze(0), 'prog': logs}


def test_data_parallel_averages_a_loss_of_shape_one(quiet, two_fake_gpus):
    """Each replica's (1,) loss is the loss (the contract allows that shape), so it is
    averaged like a 0-dim one, not concatenated into shape (2,): the fit matches one
    device's."""
    torch.manual_seed(0)
    plain = UnsqueezedLoss()
    Trainer(**quiet(nb_sanity_val_steps=0)).fit(plain)
    torch.manual_seed(0)
    model = UnsqueezedLoss()
    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.device = FakeTwoGPUs()
    trainer.fit(model)
    assert two_fake_gpus
    for a, b in zip(plain.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_data_parallel_keeps_concatenating_other_one_element_outputs(two_fake_gpus):
    """Only the loss is taken as a scalar: another (1,) output (one prediction per
    replica's single sample) is still concatenated."""
    from pytorch_lightning.placement.data_parallel import DataParallelRunner

    class Step(nn.Module):
        def training_step(self, batch, batch_nb):
            x, = batch
            return {'loss': x.sum().unsqueeze(0), 'pred': x[:, 0]}

        def validation_step(self, batch, batch_nb):
            x, = batch
            return {'loss': x[:, 0]}  # not a training loss: concatenated

    runner = DataParallelRunner(Step(), [0, 1])
    runner.output_device = torch.device('cpu')
    x = torch.tensor([[1.0], [3.0]])
    out = runner.run('training_step', (x,), 0)
    assert out['loss'].shape == () and out['loss'].item() == 2.0
    assert out['pred'].tolist() == [1.0, 3.0]
    assert runner.run('validation_step', (x,), 0)['loss'].tolist() == [1.0, 3.0]

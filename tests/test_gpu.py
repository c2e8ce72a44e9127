"""GPU tests of the device building blocks. Every test is skipped without CUDA, and the
DataParallel tests with fewer than 2 GPUs. Run them all with ``scripts/gpu_check.sh``."""
import collections

import pytest
import torch
from torch import nn

from pytorch_lightning import RootModule
from pytorch_lightning.exceptions import MisconfigurationException
from pytorch_lightning.placement.data_parallel import DataParallelRunner
from pytorch_lightning.placement.gpus import parse_gpus, root_gpu
from pytorch_lightning.utilities.transfer import move_to_device

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_gpu = pytest.mark.skipif(GPUS < 1, reason='needs CUDA')
needs_2_gpus = pytest.mark.skipif(GPUS < 2, reason=f'needs 2 GPUs, this machine has {GPUS}')

Pair = collections.namedtuple('Pair', ['x', 'y'])


@needs_gpu
def test_parse_gpus_sees_the_real_devices():
    assert parse_gpus(-1) == list(range(torch.cuda.device_count()))
    assert parse_gpus('-1') == parse_gpus(-1)
    assert parse_gpus(1) == [0] and root_gpu(parse_gpus('0,')) == 0
    with pytest.raises(MisconfigurationException, match=f'sees {GPUS} GPU'):
        parse_gpus([GPUS])


@needs_gpu
def test_batches_move_to_cuda_from_pinned_and_pageable_memory():
    x = torch.randn(64, 8).pin_memory()
    y = torch.arange(64)  # pageable
    batch = {'pair': Pair(x, y), 'rest': [x * 2, 'text']}
    out = move_to_device(batch, torch.device('cuda', 0), non_blocking=True)
    torch.cuda.synchronize()
    assert type(out['pair']) is Pair and out['pair'].x.is_cuda and out['pair'].y.is_cuda
    assert torch.equal(out['pair'].x.cpu(), x) and torch.equal(out['pair'].y.cpu(), y)
    assert out['rest'][0].is_cuda and out['rest'][1] == 'text'
    back = move_to_device(out, 'cpu')
    assert torch.equal(back['rest'][0], x * 2)


class Tiny(RootModule):
    """A tiny regression model whose steps record what each replica could see."""

    def __init__(self, hparams=None):
        super().__init__(hparams)
        torch.manual_seed(0)
        self.layer = nn.Linear(8, 1)
        self.seen = []

    def training_step(self, batch, batch_nb):
        x, y = batch
        out = self.layer(x).squeeze(1)
        # replicate() copies attributes shallowly: the replicas share hparams and trainer,
        # and ``seen`` (one list) collects every replica's record
        self.seen.append((x.device.index, len(x), torch.is_autocast_enabled('cuda'),
                          self.hparams, getattr(self, 'trainer', None)))
        loss = ((out.float() - y) ** 2).mean()
        return loss, {'prog': {'mse': loss.detach()}, 'preds': out.detach(), 'n': len(x)}

    def validation_step(self, batch, batch_nb):
        x, y = batch
        out = self.layer(x).squeeze(1)
        return {'val_loss': ((out - y) ** 2).mean(), 'preds': out}


def batch_of(n):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=gen), torch.randn(n, generator=gen)


@needs_gpu
def test_runner_on_one_gpu_calls_the_module_itself():
    model = Tiny().cuda()
    x, y = (t.cuda() for t in batch_of(5))
    loss, _ = DataParallelRunner(model, [0]).run('training_step', (x, y), 0)
    assert loss.device == torch.device('cuda', 0)
    assert [record[:2] for record in model.seen] == [(0, 5)]


@needs_2_gpus
def test_data_parallel_training_step_equals_one_device_on_the_whole_batch():
    model = Tiny(hparams={'lr': 0.1}).cuda(0)
    model.trainer = object()  # stands for the Trainer, which the loop attaches
    x, y = (t.cuda(0) for t in batch_of(7))  # 7 samples: slices of 4 and 3

    runner = DataParallelRunner(model, [0, 1])
    loss, metrics = runner.run('training_step', (x, y), 0)
    loss.backward()
    parallel_grad = model.layer.weight.grad.clone()

    model.zero_grad()
    model.seen.clear()
    whole, whole_metrics = model.training_step((x, y), 0)
    whole.backward()

    assert runner.module is model
    torch.testing.assert_close(loss, whole)
    torch.testing.assert_close(parallel_grad, model.layer.weight.grad)
    assert loss.device == torch.device('cuda', 0)
    torch.testing.assert_close(metrics['prog']['mse'], whole_metrics['prog']['mse'])
    torch.testing.assert_close(metrics['preds'], whole_metrics['preds'])
    assert metrics['n'] == pytest.approx((4 * 4 + 3 * 3) / 7)


@needs_2_gpus
def test_replicas_see_the_module_attributes_and_the_context():
    model = Tiny(hparams={'lr': 0.1}).cuda(0)
    trainer = model.trainer = object()

    def autocast():
        return torch.autocast('cuda', dtype=torch.bfloat16)

    x, y = (t.cuda(0) for t in batch_of(8))
    loss, metrics = DataParallelRunner(model, [0, 1]).run(
        'training_step', (x, y), 0, context=autocast)
    records = sorted(model.seen, key=lambda record: record[0])
    assert [record[:3] for record in records] == [(0, 4, True), (1, 4, True)]
    assert all(record[3] == {'lr': 0.1} and record[4] is trainer for record in records)
    assert loss.dtype == torch.float32 and metrics['preds'].dtype == torch.bfloat16
    assert not torch.is_autocast_enabled('cuda')  # never entered in the calling thread


@needs_2_gpus
def test_data_parallel_validation_outputs_are_gathered_per_batch():
    model = Tiny().cuda(0)
    x, y = (t.cuda(0) for t in batch_of(9))
    runner = DataParallelRunner(model, [0, 1])
    with torch.no_grad():
        out = runner.run('validation_step', (x, y), 0)
        expected = model.validation_step((x, y), 0)
    assert out['preds'].shape == (9,) and out['preds'].device == torch.device('cuda', 0)
    torch.testing.assert_close(out['preds'], expected['preds'])
    torch.testing.assert_close(out['val_loss'], expected['val_loss'])
    assert not out['val_loss'].requires_grad

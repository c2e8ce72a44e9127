"""GPU tests: the device building blocks, then the Trainer on one GPU (and on two with
DataParallel). Every test is skipped without CUDA, the DataParallel tests with fewer than 2
GPUs, the digits example without test-tube or scikit-learn. The Trainer runs without a logger
unless logging is what a test is about: test-tube, the default logger, may be missing on a GPU
machine. Run them all with ``scripts/gpu_check.sh`` (docs/devices.md, "Running the GPU
checks")."""
import collections
import importlib.util
import os
import sys

os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # before CUDA starts: bit-exact tests

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pytorch_lightning import NonFiniteLossError, RootModule, Trainer  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402
from pytorch_lightning.exceptions import MisconfigurationException  # noqa: E402
from pytorch_lightning.placement.data_parallel import DataParallelRunner  # noqa: E402
from pytorch_lightning.placement.gpus import parse_gpus, root_gpu  # noqa: E402
from pytorch_lightning.utilities.transfer import move_to_device  # noqa: E402

from host_syncs import ReadsPerBatch, cuda_sync_warnings  # noqa: E402

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_gpu = pytest.mark.skipif(GPUS < 1, reason='needs CUDA')
needs_2_gpus = pytest.mark.skipif(GPUS < 2, reason=f'needs 2 GPUs, this machine has {GPUS}')
HAS_TEST_TUBE = importlib.util.find_spec('test_tube') is not None
needs_test_tube = pytest.mark.skipif(not HAS_TEST_TUBE, reason='needs test-tube (the default '
                                     'logger): scripts/gpu_check.sh --prepare carries it')

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


# ------------------------------------------------------------------------------ the Trainer
class _Tiny(RootModule):
    def __init__(self, n=2048, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, width, generator=gen)
        self.data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        return loss, {'train_loss': loss}

    def validation_step(self, data_batch, batch_nb):
        x, y = data_batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=1e-3)

    @property
    def tng_dataloader(self):  # pageable memory, as most users' loaders
        return torch.utils.data.DataLoader(self.data, batch_size=32, shuffle=True)

    @property
    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.data, batch_size=256)


@needs_gpu
@pytest.mark.skipif(importlib.util.find_spec('sklearn') is None, reason='needs scikit-learn')
@needs_test_tube  # examples/digits.py imports test-tube's argument parser
def test_digits_on_one_gpu_reaches_95_percent(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'examples'))
    try:
        import digits
    finally:
        sys.path.pop(0)
    result = digits.main(['--gpus', '1', '--save_path', str(tmp_path)])
    assert result['trainer'].device.root.type == 'cuda'
    assert result['val_acc'] >= 0.95


@needs_gpu
def test_a_pageable_batch_moves_to_the_gpu_without_a_host_sync():
    """The trainer moves each batch with the module's ``transfer_batch_to_device``. A blocking
    copy from pageable memory (a DataLoader without ``pin_memory``, the common case) makes
    the host wait until the GPU has finished the previous step's work: one host sync per
    tensor per batch. Copied with ``non_blocking=True``, the host only stages the bytes."""
    model = _Tiny(n=64)
    batch = next(iter(model.tng_dataloader))
    with cuda_sync_warnings() as count:
        moved = model.transfer_batch_to_device(batch, torch.device('cuda', 0))
        syncs = count()
    assert all(t.is_cuda for t in moved)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(moved, batch))
    assert syncs == 0, f'{syncs} host syncs moving a pageable batch of {len(batch)} tensors'


@needs_gpu
@pytest.mark.parametrize('amp, scaler_syncs', [(None, 0), ('bfloat16', 0), ('float16', 1)])
def test_training_batches_sync_only_where_the_trainer_reads(quiet, amp, scaler_syncs):
    """torch counts every host sync in sync-debug mode. In each training batch's window (the
    step, backward, optimizer step, the batch's end hooks and the next batch's transfer, see
    tests/host_syncs.py) every sync must be one of the trainer's own reads (``read_numbers``:
    here the NaN-flag check every ``add_log_row_interval`` = 10 batches), plus, with float16,
    the loss scaler's read of its inf flag (``GradScaler.step``, once per step)."""
    windows = ReadsPerBatch(count=None)
    trainer = Trainer(**quiet(gpus=1, use_amp=amp is not None, amp_dtype=amp,
                              nb_sanity_val_steps=0, checkpoint_callback=False,
                              early_stop_callback=False, callbacks=[windows]))
    with cuda_sync_warnings() as count:
        windows.count = count
        trainer.fit(_Tiny(n=32 * 40))  # 40 steps: 39 complete windows
        whole_fit = count()
    got = windows.windows()
    steps = trainer.nb_training_batches
    print(f'amp={amp}: {whole_fit} host syncs in the whole fit (setup, validation included) '
          f'for {steps} steps; in the training windows {sum(s for s, _ in got)} syncs, '
          f'{sum(r for _, r in got)} of them trainer reads, over {len(got)} batches')
    assert steps == 40 and len(got) == 39
    assert [reads for _, reads in got] == [int((k + 1) % 10 == 0) for k in range(39)]
    unexplained = [(k, syncs, reads) for k, (syncs, reads) in enumerate(got)
                   if not reads <= syncs <= reads + scaler_syncs]
    assert not unexplained, ('windows (batch, host syncs, trainer reads) with syncs the trainer '
                             f'did not ask for: {unexplained}')


@needs_gpu
@needs_test_tube
def test_trainer_defaults_sync_only_where_the_trainer_reads(tmp_path):
    """The defaults (test-tube log rows, the progress bar, checkpoints, early stopping): every
    sync in a training batch is a log row or a flag check (a bar redraw mid-epoch copies its
    numbers without waiting, ``NumbersRead``), so at most one per add_log_row_interval = 10
    batches: 0.1 per step."""
    windows = ReadsPerBatch(count=None)
    trainer = Trainer(default_save_path=str(tmp_path), gpus=1, max_nb_epochs=1,
                      nb_sanity_val_steps=0, callbacks=[windows])
    with cuda_sync_warnings() as count:
        windows.count = count
        trainer.fit(_Tiny(n=32 * 100))
        whole_fit = count()
    got = windows.windows()
    syncs, reads = sum(s for s, _ in got), sum(r for _, r in got)
    print(f'defaults: {whole_fit} host syncs in the whole fit, {syncs} in {len(got)} training '
          f'windows ({syncs / len(got):.3f} per step), {reads} trainer reads')
    unexplained = [(k, s, r) for k, (s, r) in enumerate(got) if s > r]
    assert not unexplained, ('windows (batch, host syncs, trainer reads) with syncs the trainer '
                             f'did not ask for: {unexplained}')
    assert syncs <= 0.1 * len(got) + 1e-9, f'{syncs} host syncs in {len(got)} training batches'


@needs_gpu
def test_numbers_read_copies_to_the_host_without_a_sync():
    """What a mid-epoch bar redraw does on a GPU: the copy starts without a host sync, and
    the numbers arrive once the GPU got there."""
    from pytorch_lightning.utilities import NumbersRead
    values = {'a': torch.tensor(1.5, device='cuda'), 'n': torch.tensor(3, device='cuda'),
              'host': 2.0, 'many': torch.zeros(3, device='cuda')}
    with cuda_sync_warnings() as count:
        read = NumbersRead(values)
        ready = read.ready()
        syncs = count()
    assert syncs == 0, f'{syncs} host syncs starting a NumbersRead'
    torch.cuda.synchronize()
    assert read.ready() and isinstance(ready, bool)
    assert read.numbers() == {'a': 1.5, 'n': 3, 'host': 2.0}


class _NaNAt(_Tiny):
    def training_step(self, data_batch, batch_nb):
        loss, logs = super().training_step(data_batch, batch_nb)
        if self.trainer.state.total_batches == 13:
            loss = loss * float('nan')
        return loss, logs


@needs_gpu
def test_a_nan_loss_is_caught_by_the_device_flag(quiet):
    """On a GPU each loss goes into a flag on the device, read every add_log_row_interval
    batches: the NaN of batch 13 is reported at the read after batch 14."""
    trainer = Trainer(**quiet(gpus=1, add_log_row_interval=5, nb_sanity_val_steps=0))
    assert not trainer.device.cheap_item
    with pytest.raises(NonFiniteLossError, match=r'in training batches 10\.\.14 '):
        trainer.fit(_NaNAt(n=32 * 20))


@needs_gpu
def test_float16_amp_trains_saves_its_scaler_and_resumes_bit_exactly(quiet, tmp_path):
    # warn_only: an operation without a deterministic CUDA kernel warns instead of raising;
    # the comparison below is what decides
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        def fit(epochs, folder, resume=None):
            torch.manual_seed(0)
            model = _Tiny(n=512)
            trainer = Trainer(**quiet(gpus=1, use_amp=True, max_nb_epochs=epochs,
                                      default_save_path=str(tmp_path / folder),
                                      checkpoint_callback=ModelCheckpoint(tmp_path / folder / 'c'),
                                      resume_from_checkpoint=resume))
            trainer.fit(model)
            return trainer, model

        full, full_model = fit(2, 'full')
        assert full.precision.dtype == torch.float16 and full.precision.scaler is not None
        fit(1, 'half')
        last = tmp_path / 'half' / 'c' / 'last.ckpt'
        saved = torch.load(last, map_location='cpu', weights_only=True)['lightning']
        assert 'scale' in saved['precision']['scaler']
        resumed, resumed_model = fit(2, 'half', resume=last)
        assert resumed.precision.scaler.get_scale() == full.precision.scaler.get_scale()
        for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
            assert torch.equal(a.cpu(), b.cpu())
    finally:
        torch.use_deterministic_algorithms(False)


@needs_gpu
def test_gpu_checkpoint_loads_on_the_cpu(quiet, tmp_path):
    trainer = Trainer(**quiet(gpus=1))
    trainer.fit(_Tiny(n=256))
    trainer.save_checkpoint(tmp_path / 'gpu.ckpt')
    model = _Tiny.load_from_checkpoint(tmp_path / 'gpu.ckpt')
    assert all(p.device.type == 'cpu' for p in model.parameters())
    for a, b in zip(trainer.module.parameters(), model.parameters()):
        assert torch.equal(a.cpu(), b)


@needs_gpu
def test_cpu_checkpoint_resumes_on_a_gpu(quiet, tmp_path):
    cpu = Trainer(**quiet(checkpoint_callback=ModelCheckpoint(tmp_path / 'c')))
    cpu.fit(_Tiny(n=256))
    gpu = Trainer(**quiet(gpus=1, max_nb_epochs=2,
                          resume_from_checkpoint=tmp_path / 'c' / 'last.ckpt'))
    model = _Tiny(n=256)
    gpu.fit(model)
    assert gpu.num_gpus == 1 and gpu.root_gpu == 0 and gpu.current_epoch == 1
    assert all(p.is_cuda for p in model.parameters())
    assert all(s['exp_avg'].is_cuda for s in gpu.optimizers[0].state.values())


@needs_2_gpus
def test_trainer_with_data_parallel_trains_and_validates(quiet):
    trainer = Trainer(**quiet(gpus=2, max_nb_epochs=2))
    model = _Tiny()
    trainer.fit(model)
    assert type(trainer.device).__name__ == 'DataParallelDevice'
    assert trainer.module is model and 'val_loss' in trainer.callback_metrics
    assert trainer.callback_metrics['val_loss'] < 0.5


@needs_2_gpus
def test_test_after_a_data_parallel_fit(quiet):
    class WithTest(_Tiny):
        def test_step(self, data_batch, batch_nb):
            x, y = data_batch
            return {'test_acc': (self.net(x).argmax(1) == y).float().mean()}

        @property
        def test_dataloader(self):
            return self.val_dataloader

    trainer = Trainer(**quiet(gpus=2))
    trainer.fit(WithTest())
    assert trainer.test()['test_acc'] > 0.8

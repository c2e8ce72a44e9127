"""GPU tests of the device building blocks. Every test is skipped without CUDA, and the
DataParallel tests with fewer than 2 GPUs. Run them all with ``scripts/gpu_check.sh``."""
import collections
import os

os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # before CUDA starts: bit-exact tests

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pytorch_lightning import RootModule  # noqa: E402
from pytorch_lightning.exceptions import MisconfigurationException  # noqa: E402
from pytorch_lightning.placement.data_parallel import DataParallelRunner  # noqa: E402
from pytorch_lightning.placement.gpus import parse_gpus, root_gpu  # noqa: E402
from pytorch_lightning.utilities.transfer import move_to_device  # noqa: E402

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


# ------------------------------------------------------------------------------ the Trainer
def _digits(argv):
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'examples'))
    import digits
    return digits.main(argv)


@needs_gpu
def test_digits_on_one_gpu_reaches_95_percent(tmp_path):
    result = _digits(['--gpus', '1', '--save_path', str(tmp_path)])
    assert result['trainer'].device.root.type == 'cuda'
    assert result['val_acc'] >= 0.95


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
    def tng_dataloader(self):
        return torch.utils.data.DataLoader(self.data, batch_size=32, shuffle=True)

    @property
    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.data, batch_size=256)


@needs_gpu
@pytest.mark.parametrize('use_amp', [False, True])
def test_host_syncs_per_training_step_at_most_a_tenth(tmp_path, use_amp):
    """torch counts every host sync in sync-debug mode ('warn'); with the defaults (a log row
    every 10 batches, bar redraws throttled) fit stays at <= 0.1 per step. float16's scaler
    reads its inf flag every step: reported, not asserted."""
    import warnings
    from pytorch_lightning import Trainer
    trainer = Trainer(default_save_path=str(tmp_path), gpus=1, max_nb_epochs=1,
                      nb_sanity_val_steps=0, use_amp=use_amp, checkpoint_callback=False,
                      early_stop_callback=False)
    model = _Tiny()
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            trainer.fit(model)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = sum('synchroniz' in str(w.message) for w in caught)
    steps = trainer.nb_training_batches
    print(f'use_amp={use_amp}: {syncs} host syncs in {steps} steps ({syncs / steps:.3f}/step)')
    if not use_amp:
        assert syncs / steps <= 0.1


@needs_gpu
def test_float16_amp_trains_saves_its_scaler_and_resumes_bit_exactly(tmp_path):
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import ModelCheckpoint
    torch.use_deterministic_algorithms(True)
    try:
        def fit(epochs, resume=None, folder='a'):
            torch.manual_seed(0)
            model = _Tiny(n=512)
            trainer = Trainer(default_save_path=str(tmp_path / folder), gpus=1, use_amp=True,
                              max_nb_epochs=epochs, progress_bar=False,
                              checkpoint_callback=ModelCheckpoint(tmp_path / folder / 'c'),
                              resume_from_checkpoint=resume)
            trainer.fit(model)
            return trainer, model

        full, full_model = fit(2, folder='full')
        assert full.precision.dtype == torch.float16 and full.precision.scaler is not None
        fit(1, folder='half')
        last = tmp_path / 'half' / 'c' / 'last.ckpt'
        saved = torch.load(last, map_location='cpu', weights_only=True)['lightning']
        assert 'scale' in saved['precision']['scaler']
        _, resumed_model = fit(2, resume=last, folder='half')
        for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
            assert torch.equal(a.cpu(), b.cpu())
    finally:
        torch.use_deterministic_algorithms(False)


@needs_gpu
def test_gpu_checkpoint_loads_on_the_cpu(tmp_path):
    from pytorch_lightning import Trainer
    trainer = Trainer(default_save_path=str(tmp_path), gpus=1, max_nb_epochs=1,
                      progress_bar=False)
    trainer.fit(_Tiny(n=256))
    trainer.save_checkpoint(tmp_path / 'gpu.ckpt')
    model = _Tiny.load_from_checkpoint(tmp_path / 'gpu.ckpt')
    assert all(p.device.type == 'cpu' for p in model.parameters())


@needs_2_gpus
def test_trainer_with_data_parallel_trains_and_validates(tmp_path):
    from pytorch_lightning import Trainer
    trainer = Trainer(default_save_path=str(tmp_path), gpus=2, max_nb_epochs=2,
                      progress_bar=False)
    model = _Tiny()
    trainer.fit(model)
    assert type(trainer.device).__name__ == 'DataParallelDevice'
    assert trainer.module is model and 'val_loss' in trainer.callback_metrics
    assert trainer.callback_metrics['val_loss'] < 0.5


@needs_gpu
def test_cpu_checkpoint_resumes_on_a_gpu(tmp_path):
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import ModelCheckpoint
    cpu = Trainer(default_save_path=str(tmp_path), max_nb_epochs=1, progress_bar=False,
                  checkpoint_callback=ModelCheckpoint(tmp_path / 'c'))
    cpu.fit(_Tiny(n=256))
    gpu = Trainer(default_save_path=str(tmp_path), gpus=1, max_nb_epochs=2, progress_bar=False,
                  resume_from_checkpoint=tmp_path / 'c' / 'last.ckpt')
    model = _Tiny(n=256)
    gpu.fit(model)
    assert gpu.num_gpus == 1 and gpu.root_gpu == 0 and gpu.current_epoch == 1
    assert all(p.is_cuda for p in model.parameters())
    assert all(s['exp_avg'].is_cuda for s in gpu.optimizers[0].state.values())


@needs_2_gpus
def test_test_after_a_data_parallel_fit(tmp_path):
    from pytorch_lightning import Trainer

    class WithTest(_Tiny):
        def test_step(self, data_batch, batch_nb):
            x, y = data_batch
            return {'test_acc': (self.net(x).argmax(1) == y).float().mean()}

        @property
        def test_dataloader(self):
            return self.val_dataloader

    trainer = Trainer(default_save_path=str(tmp_path), gpus=2, max_nb_epochs=1,
                      progress_bar=False)
    trainer.fit(WithTest())
    assert trainer.test()['test_acc'] > 0.8

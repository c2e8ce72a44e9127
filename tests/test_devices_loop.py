"""The one batch path with the device and precision parts, on the CPU: closure optimizers
(LBFGS), bfloat16 and float16 autocast (with a GradScaler), optimizer_step overrides, batch
transfer through the device code path, the lazy NaN check, and the argument errors."""
import math
import signal
import warnings

import pytest
import torch
from torch import nn

from pytorch_lightning import MisconfigurationException, NonFiniteLossError, Trainer
from pytorch_lightning import checkpoint_io
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, ProgressBar
from pytorch_lightning.placement import DataParallelDevice, FullPrecision, MixedPrecision
from pytorch_lightning.placement.data_parallel import DataParallelRunner

from models import TinyModel, TrainOnlyModel
from host_syncs import ReadsPerBatch
from test_resume import assert_same_run, rows
from test_resume_workers import run


def losses_of(trainer_kwargs, model):
    seen = []

    class Losses(Callback):
        def on_batch_end(self, trainer, module):
            seen.append(trainer.last_loss.item())

    Trainer(**trainer_kwargs, callbacks=[Losses()]).fit(model)
    return seen


# ------------------------------------------------------------------------------ LBFGS
class LBFGSModel(TinyModel):
    calls = 0

    def training_step(self, data_batch, batch_nb):
        LBFGSModel.calls += 1
        return super().training_step(data_batch, batch_nb)

    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=1.0, max_iter=5,
                                 line_search_fn='strong_wolfe')


def test_lbfgs_trains_through_the_closure(quiet):
    LBFGSModel.calls = 0
    seen = losses_of(quiet(max_nb_epochs=4, nb_sanity_val_steps=0), LBFGSModel(batch_size=64))
    assert len(seen) == 4 and LBFGSModel.calls > 4  # the step re-evaluated the loss
    assert seen[-1] < seen[0] / 2


def test_lbfgs_errors_before_the_first_batch(quiet):
    with pytest.raises(MisconfigurationException, match='LBFGS.*accumulate_grad_batches=2'):
        Trainer(**quiet(accumulate_grad_batches=2)).fit(LBFGSModel())
    with pytest.raises(MisconfigurationException, match='LBFGS.*float16'):
        Trainer(**quiet(use_amp=True, amp_dtype='float16')).fit(LBFGSModel())

    class PlainOverride(LBFGSModel):
        def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i):
            optimizer.step()

    with pytest.raises(MisconfigurationException, match='second_order_closure'):
        Trainer(**quiet()).fit(PlainOverride())


def test_second_order_closure_override_steps_lbfgs(quiet):
    class Warmup(LBFGSModel):
        def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i,
                           second_order_closure=None):
            for group in optimizer.param_groups:
                group['lr'] = min(1.0, (epoch_nb + 1) / 2)
            optimizer.step(second_order_closure)

    seen = losses_of(quiet(max_nb_epochs=4, nb_sanity_val_steps=0), Warmup(batch_size=64))
    assert seen[-1] < seen[0] / 2


# ------------------------------------------------------------------------------ precision
class DtypeSpy(TinyModel):
    seen = []

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        out = self(x)
        DtypeSpy.seen.append((out.dtype, self.layer.weight.dtype))
        return nn.functional.cross_entropy(out, y)

    def validation_step(self, data_batch, batch_nb):
        DtypeSpy.seen.append((self(data_batch[0]).dtype, 'val'))
        return super().validation_step(data_batch, batch_nb)


@pytest.mark.parametrize('amp_dtype, dtype', [(None, torch.bfloat16), ('bfloat16', torch.bfloat16),
                                              ('float16', torch.float16)])
def test_autocast_on_the_cpu(quiet, amp_dtype, dtype):
    DtypeSpy.seen = []
    trainer = Trainer(**quiet(use_amp=True, amp_dtype=amp_dtype, nb_sanity_val_steps=1))
    trainer.fit(DtypeSpy())
    assert isinstance(trainer.precision, MixedPrecision) and trainer.precision.dtype == dtype
    assert (trainer.precision.scaler is not None) == (dtype == torch.float16)
    train = [s for s in DtypeSpy.seen if s[1] != 'val']
    assert train and all(s == (dtype, torch.float32) for s in train)  # float32 master weights
    assert all(s[0] == dtype for s in DtypeSpy.seen if s[1] == 'val')


def test_full_precision_on_the_cpu_by_default(quiet):
    DtypeSpy.seen = []
    trainer = Trainer(**quiet())
    trainer.fit(DtypeSpy())
    assert isinstance(trainer.precision, FullPrecision)
    assert trainer.num_gpus == 0 and trainer.root_gpu is None
    assert all(s[0] == torch.float32 for s in DtypeSpy.seen)


def test_float16_scaler_unscales_before_clipping_and_is_checkpointed(quiet, tmp_path):
    """Gradients read in on_before_optimizer_step are true ones (the scaler's factor, 2**16,
    is gone), clipping sees them, and the scaler's state is saved and restored."""
    norms = []

    class Norms(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer, optimizer_i):
            norms.append(float(torch.linalg.vector_norm(module.layer.weight.grad)))

    ckpt = ModelCheckpoint(tmp_path / 'c')
    trainer = Trainer(**quiet(use_amp=True, amp_dtype='float16', gradient_clip=0.5,
                              checkpoint_callback=ckpt, callbacks=[Norms()]))
    trainer.fit(TinyModel())
    assert norms and max(norms) < 100  # scaled gradients would be ~65536x larger
    scale = trainer.precision.scaler.get_scale()
    saved = checkpoint_io.load(tmp_path / 'c' / 'last.ckpt')['lightning']['precision']
    assert saved['scaler']['scale'] == scale
    resumed = Trainer(**quiet(use_amp=True, amp_dtype='float16', max_nb_epochs=2,
                              resume_from_checkpoint=tmp_path / 'c' / 'last.ckpt'))
    resumed.fit(TinyModel())
    assert resumed.precision.scaler.state_dict()['_growth_tracker'] >= 0


def test_classic_optimizer_step_override_goes_through_the_scaler(quiet):
    class Override(TinyModel):
        stepped = 0

        def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i):
            Override.stepped += 1
            optimizer.step()

    trainer = Trainer(**quiet(use_amp=True, amp_dtype='float16', nb_sanity_val_steps=0))
    trainer.fit(Override())
    # the scaler counted each step: its growth tracker advanced (a skipped scaler never does)
    assert Override.stepped == 8
    assert trainer.precision.scaler.state_dict()['_growth_tracker'] == 8


def test_a_second_fit_starts_with_a_fresh_loss_scaler(quiet):
    """Each fit is a new run: the float16 scaler does not carry the first run's scale and
    growth count into the second (a resume restores them from its checkpoint instead)."""
    trainer = Trainer(**quiet(use_amp=True, amp_dtype='float16', nb_sanity_val_steps=0))
    trainer.fit(TinyModel())
    first = trainer.precision.scaler
    assert first.state_dict()['_growth_tracker'] == 8  # one per step of the 8
    trainer.fit(TinyModel())
    assert trainer.precision.scaler is not first
    assert trainer.precision.scaler.state_dict()['_growth_tracker'] == 8


def test_an_override_that_never_steps_is_reported(quiet):
    class Lazy(TinyModel):
        def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i):
            pass

    with pytest.warns(UserWarning, match='did not call optimizer.step'):
        Trainer(**quiet(nb_sanity_val_steps=0)).fit(Lazy())


# ------------------------------------------------------------------------------ devices
def test_batches_go_through_the_device_transfer_path(quiet):
    """On an accelerator every batch goes through the module's transfer_batch_to_device;
    forced on the CPU here, with a nested batch."""
    from collections import namedtuple
    Pair = namedtuple('Pair', 'x y')
    calls = []

    class Nested(TinyModel):
        def transfer_batch_to_device(self, batch, device):
            moved = super().transfer_batch_to_device(batch, device)
            calls.append((type(batch).__name__, device))
            if isinstance(batch, dict):  # a training batch: the nesting survives the move
                assert type(moved['pair']) is Pair and torch.equal(moved['extra'][0],
                                                                   batch['extra'][0])
            return moved

        def training_step(self, data_batch, batch_nb):
            return super().training_step(tuple(data_batch['pair']), batch_nb)

        @property
        def tng_dataloader(self):
            return [{'pair': Pair(*b), 'extra': [b[0][:1]]} for b in super().tng_dataloader]

    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.device.transfers_batches = True
    trainer.fit(Nested())
    # 8 training batches, then the epoch's 4 validation batches
    assert [kind for kind, _ in calls] == ['dict'] * 8 + ['list'] * 4
    assert all(device == torch.device('cpu') for _, device in calls)


class NaNAt(TrainOnlyModel):
    def training_step(self, data_batch):
        loss = super().training_step(data_batch)
        if self.trainer.state.total_batches == 13:
            loss = loss * float('nan')
        return loss


def test_lazy_nan_check_without_the_bar(quiet, tmp_path):
    """Off the CPU no loss is read per step: the flag is read every add_log_row_interval
    batches and before each checkpoint; fit must not return with NaN weights."""
    trainer = Trainer(**quiet(max_nb_epochs=4, add_log_row_interval=5))
    trainer.device.cheap_item = False
    with pytest.raises(NonFiniteLossError,
                       match=r'in training batches 13\.\.15 .*steps were taken'):
        trainer.fit(NaNAt())
    ckpt = ModelCheckpoint(tmp_path / 'c', every_n_steps=1)
    trainer = Trainer(**quiet(max_nb_epochs=4, add_log_row_interval=5, checkpoint_callback=ckpt))
    trainer.device.cheap_item = False
    with pytest.raises(NonFiniteLossError, match=r'in training batches 13\.\.13 '):
        trainer.fit(NaNAt())
    saved = checkpoint_io.load(tmp_path / 'c' / 'last.ckpt')['lightning']['trainer_state']
    assert saved['total_batches'] == 13  # the checkpoint after the NaN batch was refused
    assert all(math.isfinite(p.abs().sum().item()) for p in
               checkpoint_io.load(tmp_path / 'c' / 'last.ckpt')['state_dict'].values())


class LossShiftedAt(TrainOnlyModel):
    """Its loss plus ``shifts[total_batches]`` (0 elsewhere): a constant, so the gradients
    and the weights stay those of the plain loss."""

    def __init__(self, shifts, n=64):
        super().__init__(n=n)
        self.shifts = shifts

    def training_step(self, data_batch):
        loss = super().training_step(data_batch)
        return loss + self.shifts.get(self.trainer.state.total_batches, 0.0)


@pytest.mark.parametrize('shifts, bad', [
    ({3: float('inf'), 4: float('-inf')}, True),  # their sum is NaN: still caught
    ({3: float('inf')}, True),
    ({k: 1e30 for k in range(5)}, False),  # huge but finite losses: no false alarm
])
def test_the_lazy_probe_sums_the_losses_and_catches_any_non_finite_one(quiet, shifts, bad):
    """The device-side probe is the float32 sum of the losses since the last read: NaN or
    inf exactly when one of them was."""
    trainer = Trainer(**quiet(max_nb_epochs=1, add_log_row_interval=5, nb_sanity_val_steps=0))
    trainer.device.cheap_item = False
    if bad:
        with pytest.raises(NonFiniteLossError, match=r'in training batches 0\.\.4 '):
            trainer.fit(LossShiftedAt(shifts))
    else:
        trainer.fit(LossShiftedAt(shifts))
        assert trainer.state.total_batches == trainer.nb_training_batches


def test_unchecked_losses_are_folded_on_a_long_cadence(quiet):
    """With reads far apart (here only at the epoch end) the unchecked losses are summed into
    one tensor every 64, so memory stays bounded, and a NaN folded early is still reported."""
    lengths = []

    class Watch(Callback):
        def on_batch_end(self, trainer, module):
            lengths.append(len(trainer._unchecked_losses))

    trainer = Trainer(**quiet(max_nb_epochs=1, add_log_row_interval=1000, callbacks=[Watch()],
                              nb_sanity_val_steps=0))
    trainer.device.cheap_item = False
    with pytest.raises(NonFiniteLossError, match=r'in training batches 0\.\.99 '):
        trainer.fit(LossShiftedAt({10: float('nan')}, n=800))  # 100 batches
    assert len(lengths) == 100 and max(lengths) < 64 and 1 in lengths[60:70]


def test_lazy_nan_check_keeps_its_cadence_in_a_second_fit(quiet):
    """A second fit counts its batches from 0 again: its NaN checks still come every
    add_log_row_interval batches (not only once it passed the first fit's batch count)."""
    trainer = Trainer(**quiet(max_nb_epochs=4, add_log_row_interval=5))
    trainer.device.cheap_item = False
    trainer.fit(TrainOnlyModel())  # 32 batches, all finite
    with pytest.raises(NonFiniteLossError, match=r'in training batches 0\.\.4 '):
        trainer.fit(LossShiftedAt({2: float('nan')}))


def test_eager_nan_check_on_the_cpu_says_nothing_was_stepped(quiet):
    with pytest.raises(NonFiniteLossError, match='batch 5.*nothing was stepped'):
        Trainer(**quiet(max_nb_epochs=4)).fit(NaNAt())


@pytest.mark.parametrize('kwargs, text', [
    (dict(gpus=1), 'CUDA is not available'),
    (dict(gpus='0,1'), 'CUDA is not available'),
    (dict(distributed_backend='ddp2'), "use 'ddp'"),
    (dict(distributed_backend='ddp', gpus=2), 'CUDA is not available'),
    (dict(distributed_backend='horovod'), "'dp'"),
    (dict(use_amp=True, amp_level='O1'), 'native mixed precision'),
    (dict(amp_dtype='bfloat16'), 'use_amp=True'),
    (dict(use_amp=True, amp_dtype='half'), "'bfloat16' or 'float16'"),
    (dict(use_amp='yes'), 'use_amp'),
])
def test_device_and_precision_argument_errors(kwargs, text):
    if torch.cuda.is_available() and 'gpus' in kwargs:
        pytest.skip('CUDA is available here')
    with pytest.raises(MisconfigurationException, match=text):
        Trainer(**kwargs)


# ------------------------------------------------------------------------------ AMP resume
@pytest.fixture(scope='module')
def uninterrupted_bf16(tmp_path_factory):
    folder = tmp_path_factory.mktemp('full_bf16')
    run(folder, folder / 'out.pt', '--amp', 'bfloat16')
    return torch.load(folder / 'out.pt'), rows(folder / 'lightning_logs' / 'version_0')


@pytest.mark.parametrize('kill_at', [5, 19])
def test_bfloat16_sigkill_then_resume_is_bit_exact(tmp_path, uninterrupted_bf16, kill_at):
    out = tmp_path / 'out.pt'
    run(tmp_path, out, '--amp', 'bfloat16', '--kill-at', kill_at, expect=-signal.SIGKILL)
    run(tmp_path, out, '--amp', 'bfloat16', '--resume', tmp_path / 'ckpt' / 'last.ckpt')
    assert_same_run(torch.load(out), uninterrupted_bf16, tmp_path / 'lightning_logs' / 'version_0')


def test_warnings_are_clean_for_a_plain_fit(quiet):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        Trainer(**quiet(use_amp=True)).fit(TinyModel())


class SGDModel(TinyModel):
    """Adam reads its step counters with .item() (on the host): SGD reads nothing."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def count_host_reads(monkeypatch):
    """Count calls of Tensor.item and Tensor.tolist (the host reads of the lazy path)."""
    reads = [0]
    for name in ('item', 'tolist'):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            reads[0] += 1
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return lambda: reads[0]


def test_lazy_path_reads_the_device_once_per_log_row(quiet, tmp_path, monkeypatch):
    """Off the CPU, the running loss, the NaN flag and a log row's numbers come back in one
    transfer per row: counted here as calls of Tensor.item/tolist on the forced lazy path."""
    reads = count_host_reads(monkeypatch)
    trainer = Trainer(**quiet(experiment=None, nb_sanity_val_steps=0, add_log_row_interval=10,
                              checkpoint_callback=False, early_stop_callback=False))
    trainer.device.cheap_item = False
    trainer.fit(SGDModel(n=640))  # 80 training steps, 8 log rows, one validation
    steps = trainer.nb_training_batches
    # 8 rows (0.1 per step), plus the validation row and two host-side reads of the loader's
    # seed (CPU tensors, never a device sync)
    assert steps == 80 and reads() <= 0.1 * steps + 3, reads()


def test_values_that_are_not_numbers_are_dropped_without_a_read(monkeypatch):
    """A step's dicts may carry per-sample tensors or bools: the bar and the log rows drop
    them, and must not copy them to the host first (a host sync each on a GPU)."""
    from pytorch_lightning.utilities import numbers_only
    reads = count_host_reads(monkeypatch)
    metrics = {'loss': torch.tensor(0.5), 'preds': torch.zeros(3), 'ok': torch.tensor(True),
               'n': 4, 'note': 'text'}
    assert numbers_only(metrics) == {'loss': 0.5, 'n': 4}
    assert reads() == 1


@pytest.mark.parametrize('experiment', [False, None])
def test_lazy_path_reads_only_through_read_numbers(quiet, monkeypatch, experiment):
    """What tests/test_gpu.py relies on to attribute host syncs (tests/host_syncs.py), on the
    forced lazy path: in every training batch's window each host read is one of the trainer's
    read_numbers calls (one transfer for the values of one device), and those come once per
    add_log_row_interval batches: a log row, or without a logger the NaN-flag check."""
    windows = ReadsPerBatch(count_host_reads(monkeypatch))
    trainer = Trainer(**quiet(experiment=experiment, add_log_row_interval=5, callbacks=[windows],
                              nb_sanity_val_steps=0, checkpoint_callback=False,
                              early_stop_callback=False))
    trainer.device.cheap_item = False
    trainer.fit(SGDModel(n=160))  # 20 training batches: 19 complete windows
    got = windows.windows()
    assert [reads for _, reads in got] == [int((k + 1) % 5 == 0) for k in range(19)]
    assert all(syncs == reads for syncs, reads in got), got
    assert 'read_numbers' not in trainer.__dict__  # the counting wrapper is gone after fit


class RecordingBar(ProgressBar):
    """Redraws after every batch and records, per redraw, the running loss it showed and the
    true running loss at that moment."""

    def __init__(self):
        super().__init__(refresh_interval=0)
        self.shown = []

    def _draw(self, trainer, now, final=False):
        super()._draw(trainer, now, final)
        true = trainer._running_loss()
        postfix = self._bar.postfix or ''
        loss = [part for part in postfix.split(', ') if part.startswith('loss=')]
        self.shown.append((loss[0][len('loss='):] if loss else None,
                           None if true is None else f'{float(true):.3f}', final))


def test_bar_redraws_on_the_lazy_path_never_read_through_the_trainer(quiet, monkeypatch):
    """Off the CPU a mid-epoch redraw must not wait for the device: it starts a copy of the
    numbers and shows the previous copy's. On the forced lazy path: the only trainer reads in
    the training windows stay the NaN-flag checks every add_log_row_interval batches, each
    mid-epoch redraw shows the running loss of the redraw before it, and the epoch's last
    redraw reads at once (the true final numbers)."""
    windows = ReadsPerBatch(count=lambda: 0)
    bar = RecordingBar()
    trainer = Trainer(**quiet(add_log_row_interval=5, callbacks=[windows, bar],
                              nb_sanity_val_steps=0,
                              checkpoint_callback=False, early_stop_callback=False))
    trainer.device.cheap_item = False
    trainer.fit(SGDModel(n=160))  # 20 training batches: 19 complete windows
    assert [reads for _, reads in windows.windows()] == [int((k + 1) % 5 == 0)
                                                         for k in range(19)]
    mid = [(shown, true) for shown, true, final in bar.shown if not final]
    assert len(mid) >= 20  # every training (and validation) batch
    assert mid[0][0] is None  # no copy has arrived at the first redraw
    assert [shown for shown, _ in mid[1:]] == [true for _, true in mid[:-1]]
    final = [(shown, true) for shown, true, final in bar.shown if final]
    assert final and all(shown == true for shown, true in final)


def test_cheap_item_devices_redraw_with_the_current_numbers(quiet):
    """On the CPU (reads cost nothing) every redraw shows the numbers of its own moment."""
    bar = RecordingBar()
    trainer = Trainer(**quiet(callbacks=[bar], nb_sanity_val_steps=0,
                              checkpoint_callback=False, early_stop_callback=False))
    trainer.fit(SGDModel(n=160))
    assert len(bar.shown) >= 20 and all(shown == true for shown, true, _ in bar.shown)


# ------------------------------------------------------------------------------ DataParallel
class FakeTwoGPUs(DataParallelDevice):
    """The DataParallel device on the CPU, with the ``two_fake_gpus`` fixture: the runner
    halves each batch and reduces the two outputs onto the CPU."""
    transfers_batches, cheap_item = False, True

    def __init__(self):
        super().__init__([0, 1])
        self.root = torch.device('cpu')

    def setup(self, module):
        pass

    def run_step(self, module, name, batch, args, context):
        if self._runner is None:
            self._runner = DataParallelRunner(module, self.gpu_ids)
            self._runner.output_device = self.root  # the fake replicas' outputs live here
        return super().run_step(module, name, batch, args, context)


def test_trainer_through_the_data_parallel_device_on_fake_gpus(quiet, two_fake_gpus):
    """The Trainer's DataParallel path on the CPU: two fake GPUs (scatter halves the batch,
    every replica is the module itself). Training, validation and test steps all go through
    the runner; the weighted reduction gives one device's gradient on the whole batch, so the
    weights match a plain CPU fit."""
    torch.manual_seed(0)
    plain = TinyModel()
    Trainer(**quiet(max_nb_epochs=2)).fit(plain)
    torch.manual_seed(0)
    model = TinyModel()
    trainer = Trainer(**quiet(max_nb_epochs=2))
    trainer.device = FakeTwoGPUs()
    trainer.fit(model)
    assert two_fake_gpus and all(devices == [0, 1] for devices, _ in two_fake_gpus)
    assert any(detach for _, detach in two_fake_gpus)  # validation replicas, under no_grad
    assert trainer.num_gpus == 2 and trainer.root_gpu == 0
    for a, b in zip(plain.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert trainer.test()['test_acc'] == Trainer(**quiet()).test(plain)['test_acc']


def test_second_order_closure_never_called_is_a_clear_error(quiet):
    class Skips(TinyModel):
        def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i,
                           second_order_closure=None):
            pass

    with pytest.raises(MisconfigurationException, match='did not call it'), \
            pytest.warns(UserWarning, match='did not call optimizer.step'):
        Trainer(**quiet(nb_sanity_val_steps=0)).fit(Skips())

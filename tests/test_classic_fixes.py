"""Fixes of classic behaviours: saving before the first batch, the bar after a mid-epoch
resume, ``print_nan_grads`` with the bar on, and the classic ``on_hpc_save`` /
``on_hpc_load`` / ``backward`` hooks."""
import torch
from torch import nn
from torch.utils.data import DataLoader

from models import TinyModel, make_loader
from pytorch_lightning import Trainer, checkpoint_io
from pytorch_lightning.callbacks import Callback


class RandomModel(TinyModel):
    """Dropout, and a shuffle drawn from the global torch RNG (as is every loader iterator's
    base seed, also the sanity check's), so any difference in random state shows."""

    def __init__(self):
        super().__init__(n=48)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return self.layer(self.drop(x))

    @property
    def tng_dataloader(self):
        return DataLoader(make_loader(48, 8).dataset, batch_size=8, shuffle=True)


class SaveAt(Callback):
    """``trainer.save_checkpoint(path)`` from the callback hook ``hook`` once ``when(trainer)``."""

    def __init__(self, hook, path, when=lambda trainer: True):
        self.path, self.when, self.saved = path, when, False
        setattr(self, hook, self._save)

    def _save(self, trainer, module, *args):
        if not self.saved and self.when(trainer):
            trainer.save_checkpoint(self.path)
            self.saved = True


class RecordBatches(Callback):
    def __init__(self):
        self.seen = []

    def on_batch_start(self, trainer, module, batch):
        self.seen.append((trainer.current_epoch, trainer.state.batch_idx))


def fit_random(quiet, epochs=2, callbacks=(), **kwargs):
    torch.manual_seed(0)
    model = RandomModel()
    trainer = Trainer(**quiet(max_nb_epochs=epochs, early_stop_callback=False,
                              checkpoint_callback=False, callbacks=list(callbacks), **kwargs))
    trainer.fit(model)
    return model, trainer


def assert_same_weights(a, b):
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name


# ------------------------------------------------------------------ 1: saving before the loop
def test_save_checkpoint_in_on_fit_start_resumes_from_the_start(quiet, tmp_path):
    """Saved in ``on_fit_start`` (before the sanity check and the first batch), the file is a
    checkpoint at epoch 0, batch 0; a resume from it (in a process whose RNG has moved on)
    trains every batch and ends bit-identical to the run that wrote it."""
    path = tmp_path / 'start.ckpt'
    full, _ = fit_random(quiet, callbacks=[SaveAt('on_fit_start', path)])
    meta = checkpoint_io.load(path)['lightning']
    assert meta['trainer_state']['epoch'] == 0 and meta['trainer_state']['total_batches'] == 0
    assert meta['trainer_state']['global_step'] == 0

    record = RecordBatches()
    torch.manual_seed(123)  # the resume must not depend on the RNG it starts with
    resumed = RandomModel()
    Trainer(**quiet(max_nb_epochs=2, early_stop_callback=False, checkpoint_callback=False,
                    callbacks=[record], resume_from_checkpoint=path)).fit(resumed)
    assert record.seen == [(e, b) for e in range(2) for b in range(6)]
    assert_same_weights(full, resumed)


def test_save_checkpoint_in_on_epoch_start_resumes_that_epoch_from_its_start(quiet, tmp_path):
    """Saved in ``on_epoch_start`` of epoch 1 (its batches not drawn yet), a resume runs all of
    epoch 1 and ends bit-identical (before the fix the stale batch index of epoch 0 was saved,
    and the resume skipped epoch 1 entirely)."""
    path = tmp_path / 'epoch1.ckpt'
    full, _ = fit_random(quiet, epochs=3,
                         callbacks=[SaveAt('on_epoch_start', path, lambda t: t.current_epoch == 1)])
    assert checkpoint_io.load(path)['lightning']['trainer_state']['total_batches'] == 6

    record = RecordBatches()
    resumed, _ = fit_random(quiet, epochs=3, callbacks=[record], resume_from_checkpoint=path)
    assert record.seen == [(e, b) for e in (1, 2) for b in range(6)]
    assert_same_weights(full, resumed)


def test_save_checkpoint_in_the_first_on_batch_start_does_not_fail(quiet, tmp_path):
    """``on_batch_start`` of the first batch runs before any accumulation window exists."""
    path = tmp_path / 'first_batch.ckpt'
    fit_random(quiet, epochs=1, callbacks=[SaveAt('on_batch_start', path)])
    assert checkpoint_io.load(path)['lightning']['trainer_state']['epoch'] == 0


def test_save_checkpoint_in_on_fit_start_of_a_resumed_fit_keeps_the_resume_point(quiet, tmp_path):
    """A fit resumed mid-epoch has not taken up its position yet in ``on_fit_start``: a
    checkpoint saved there resumes from the same point as the one it was restored from."""
    mid, again = tmp_path / 'mid.ckpt', tmp_path / 'again.ckpt'
    full, _ = fit_random(quiet, callbacks=[SaveAt('on_save_point', mid, lambda t: (
        t.current_epoch, t.state.batch_idx, t._epoch_done) == (0, 2, False))])
    fit_random(quiet, callbacks=[SaveAt('on_fit_start', again)], resume_from_checkpoint=mid)
    record = RecordBatches()
    resumed, _ = fit_random(quiet, callbacks=[record], resume_from_checkpoint=again)
    assert record.seen[:3] == [(0, 3), (0, 4), (0, 5)]
    assert_same_weights(full, resumed)


# ------------------------------------------------------------------ 2: the bar after a resume
def test_progress_bar_of_a_mid_epoch_resume_starts_at_the_resumed_position(quiet, tmp_path,
                                                                          capsys):
    """6 training batches, validation (4 batches) after every 2nd: the bar's total is
    6 + 3 * 4 = 18. Saved after batch 2 (3 batches and one validation point done), the resumed
    fit's bar starts at 3 + 4 = 7 (also as tqdm's ``initial``, so its rate and ETA count only
    what this fit runs) and ends the epoch at 18/18."""
    from pytorch_lightning.callbacks.progress import ProgressBar
    path = tmp_path / 'mid.ckpt'
    fit_random(quiet, epochs=1, val_check_interval=2, callbacks=[SaveAt(
        'on_save_point', path, lambda t: t.state.batch_idx == 2 and not t._epoch_done)])
    bars = []

    class ReadBar(Callback):
        def on_batch_start(self, trainer, module, batch):
            if not bars:
                bar, = [cb for cb in trainer.checkpointed_callbacks
                        if isinstance(cb, ProgressBar)]
                bars.append(dict(bar._bar.format_dict))

    capsys.readouterr()
    fit_random(quiet, epochs=1, val_check_interval=2, progress_bar=True, callbacks=[ReadBar()],
               resume_from_checkpoint=path)
    err = capsys.readouterr().err
    counts = [r.split('|')[2].split()[0] for r in err.replace('\r', '\n').split('\n')
              if r.startswith('Epoch 0')]
    assert counts[0] == '7/18' and counts[-1] == '18/18', counts
    assert (bars[0]['n'], bars[0]['initial'], bars[0]['total']) == (7, 7, 18)


# ------------------------------------------------------------------ 3: print_nan_grads, bar on
def test_print_nan_grads_writes_whole_lines_to_stdout_around_the_live_bar(quiet, monkeypatch):
    """The bar and the message share one stream, as in a terminal or a log file: the message
    must be a line of its own (tqdm clears the bar, prints, draws it again), not glued to the
    end of the bar's line as a plain ``print`` is."""
    import io
    import re
    from models import TrainOnlyModel

    class NaNGradient(TrainOnlyModel):
        def on_after_backward(self):
            self.layer.bias.grad[1] = float('nan')

    screen = io.StringIO()
    monkeypatch.setattr('sys.stdout', screen)
    monkeypatch.setattr('sys.stderr', screen)
    Trainer(**quiet(progress_bar=True, print_nan_grads=True, checkpoint_callback=False,
                    early_stop_callback=False)).fit(NaNGradient(n=8))
    records = [r for r in re.split(r'[\r\n]', screen.getvalue()) if r.strip()]
    messages = [r for r in records if 'non-finite gradient' in r]
    assert messages and all(r.startswith('non-finite gradient in layer.bias: ')
                            for r in messages), records
    assert any(r.startswith('Epoch 0') for r in records)  # the bar was drawn around it


# ------------------------------------------------------------------ 4: classic hooks
def test_on_hpc_save_edits_the_hpc_checkpoint_and_on_hpc_load_reads_it_after_a_requeue(
        quiet, tmp_path, monkeypatch):
    """SIGUSR1 under SLURM: ``on_hpc_save(checkpoint)`` gets the whole checkpoint dict before
    ``hpc_ckpt_1.ckpt`` is written, and what it adds is in the file. The requeued job's fit
    restores that file by itself and calls ``on_hpc_load(checkpoint)`` with it, after the
    weights are restored. A plain resume calls neither."""
    import os
    import signal
    import pytest
    from pytorch_lightning import _checkpointing
    calls, requeued = [], []

    class HPCModel(TinyModel):
        def training_step(self, data_batch, batch_nb):
            if self.trainer.state.total_batches == 2 and not calls:
                os.kill(os.getpid(), signal.SIGUSR1)  # handled at the batch's save point
            return super().training_step(data_batch, batch_nb)

        def on_hpc_save(self, checkpoint):
            calls.append(('save', sorted(checkpoint), checkpoint['lightning']['trainer_state']))
            checkpoint['hpc_note'] = 'saved for the requeue'

        def on_hpc_load(self, checkpoint):
            weights_now = {k: v.clone() for k, v in self.state_dict().items()}
            calls.append(('load', checkpoint.get('hpc_note'), weights_now,
                          checkpoint['state_dict'], self.trainer.state.total_batches))

    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    monkeypatch.setattr(_checkpointing, 'requeue', requeued.append)
    kwargs = dict(max_nb_epochs=1, checkpoint_callback=False, early_stop_callback=False)
    with pytest.raises(SystemExit) as stop:
        Trainer(**quiet(**kwargs)).fit(HPCModel())
    assert stop.value.code == 0 and requeued == ['4242']
    hpc = tmp_path / 'checkpoints' / 'hpc_ckpt_1.ckpt'
    assert checkpoint_io.load(hpc)['hpc_note'] == 'saved for the requeue'
    (kind, keys, state), = calls
    assert kind == 'save' and {'state_dict', 'lightning'} <= set(keys)
    assert state['total_batches'] == 3

    Trainer(**quiet(**kwargs)).fit(HPCModel())  # the requeued job
    kind, note, weights_then, saved, total = calls[1]
    assert (kind, note, total) == ('load', 'saved for the requeue', 3)
    for name, value in saved.items():
        assert torch.equal(weights_then[name], value), name
    assert len(calls) == 2

    monkeypatch.delenv('SLURM_JOB_ID')
    Trainer(**quiet(resume_from_checkpoint=hpc, **kwargs)).fit(HPCModel())
    assert len(calls) == 2  # neither hook for a resume that is not a requeue


class BackwardOverride(TinyModel):
    """Records every call of the classic ``backward(use_amp, loss, optimizer)`` override and
    the loss ``training_step`` returned before it; ``factor`` multiplies the loss."""

    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor, self.calls, self.step_losses = factor, [], []

    def training_step(self, data_batch, batch_nb):
        loss, prog = super().training_step(data_batch, batch_nb)
        self.step_losses.append(loss.detach().float())
        return loss, prog

    def backward(self, use_amp, loss, optimizer):
        scaler = self.trainer.precision.scaler
        scale = 1.0 if scaler is None else scaler.get_scale()
        self.calls.append((use_amp, loss.detach().float(), scale, optimizer))
        (loss * self.factor).backward()


def test_a_backward_override_runs_instead_of_the_trainers_backward(quiet):
    """``backward(use_amp, loss, optimizer)``: called once per training step with the loss
    divided by the accumulation window and the optimizer being stepped; what it does is the
    backward (a loss multiplied by 0 trains nothing)."""
    torch.manual_seed(0)
    model = BackwardOverride(factor=0.0, lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(**quiet(accumulate_grad_batches=2, nb_sanity_val_steps=0,
                              checkpoint_callback=False, early_stop_callback=False))
    trainer.fit(model)
    assert len(model.calls) == len(model.step_losses) == 8
    for (use_amp, loss, scale, optimizer), step_loss in zip(model.calls, model.step_losses):
        assert use_amp is False and optimizer is trainer.optimizers[0]
        assert torch.equal(loss, step_loss / 2)
    for old, new in zip(before, model.parameters()):
        assert torch.equal(old, new)


def test_a_backward_override_gets_the_scaled_loss_under_float16(quiet):
    """CPU float16 AMP: the override receives the loss already multiplied by the GradScaler's
    scale, so a plain ``loss.backward()`` in it trains exactly as without the override."""
    def run(cls):
        torch.manual_seed(0)
        model = cls(lr=0.01)
        Trainer(**quiet(use_amp=True, amp_dtype='float16', nb_sanity_val_steps=0,
                        checkpoint_callback=False, early_stop_callback=False)).fit(model)
        return model

    plain, overridden = run(TinyModel), run(BackwardOverride)
    assert_same_weights(plain, overridden)
    assert len(overridden.calls) == 8
    for (use_amp, loss, scale, _), step_loss in zip(overridden.calls, overridden.step_losses):
        assert use_amp is True and scale > 1
        assert torch.equal(loss, step_loss * scale)


def test_a_backward_override_with_the_wrong_arguments_is_refused_before_training(quiet):
    import pytest
    from pytorch_lightning.exceptions import MisconfigurationException

    class OneArgument(TinyModel):
        def backward(self, loss):
            loss.backward()

    with pytest.raises(MisconfigurationException, match=r'OneArgument\.backward.*'
                       r'def backward\(self, use_amp, loss, optimizer\)'):
        Trainer(**quiet()).fit(OneArgument())

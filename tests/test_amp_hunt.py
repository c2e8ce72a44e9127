"""Mixed precision and the closure/optimizer-step path as researchers combine them, on the
CPU: float16 with a GradScaler('cpu') against a hand-written torch loop (accumulation with a
window left open at the epoch end, clipping, print_nan_grads, a skipped step, two optimizers
with frequencies, step- and epoch-wise schedulers), LBFGS, classic ``optimizer_step``
overrides, and a mid-epoch resume compared with an uninterrupted run."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from pytorch_lightning import MisconfigurationException, RootModule, Trainer
from pytorch_lightning.callbacks import Callback

from models import TinyModel, make_loader

F16 = dict(use_amp=True, amp_dtype='float16')
INF_AT = 4  # the training batch (counted over the run) whose gradients get an inf


def batches(nb=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(nb):
        x = torch.randn(8, 32, generator=gen)
        out.append((x, (x[:, 0] > 0).long()))
    return out


class Stream(IterableDataset):
    """A loader without ``len()``: the epoch length is unknown, so the last accumulation
    window is still open when the loader runs out."""

    def __iter__(self):
        return iter(batches())


def inject_inf(module, count):
    if count == INF_AT:
        module.layer.weight.grad[0, 0] = math.inf


class Scaled(RootModule):
    """One SGD optimizer with a step-wise scheduler; an inf gradient at batch INF_AT."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(32, 2)

    def training_step(self, batch, batch_nb):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def on_after_backward(self):
        inject_inf(self, self.trainer.state.total_batches)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return {'optimizer': opt, 'lr_scheduler': {
            'scheduler': torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5), 'interval': 'step'}}

    def train_dataloader(self):
        return DataLoader(Stream(), batch_size=None)


class Record(Callback):
    """The scaler's (scale, growth tracker) and the lr after every batch and epoch end."""

    def __init__(self):
        self.seen, self.unscales = [], 0

    def on_fit_start(self, trainer, module):
        scaler = trainer.precision.scaler
        unscale = scaler.unscale_

        def counting(optimizer):
            self.unscales += 1
            return unscale(optimizer)
        scaler.unscale_ = counting

    def on_batch_end(self, trainer, module):
        self.seen.append(snapshot(trainer.precision.scaler, trainer.optimizers))

    on_epoch_end = on_batch_end


def snapshot(scaler, optimizers):
    return (scaler.get_scale(), scaler._get_growth_tracker(),
            tuple(g['lr'] for opt in optimizers for g in opt.param_groups))


def reference_accumulation(nb_epochs, acc, clip):
    """Scaled's run as torch's documented GradScaler recipe, written by hand."""
    torch.manual_seed(0)
    module = Scaled()
    config = module.configure_optimizers()
    opt, sched = config['optimizer'], config['lr_scheduler']['scheduler']
    scaler = torch.amp.GradScaler('cpu')
    seen, count, steps = [], 0, 0

    def close():
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(list(module.parameters()), clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        sched.step()

    for _ in range(nb_epochs):
        position = 0
        for x, y in batches():
            with torch.autocast('cpu', dtype=torch.float16):
                loss = module.training_step((x, y), count)
            scaler.scale(loss / acc).backward()
            inject_inf(module, count)
            count, position = count + 1, position + 1
            if position == acc:
                close()
                position, steps = 0, steps + 1
            seen.append(snapshot(scaler, [opt]))
        if position:
            close()
            steps += 1
        seen.append(snapshot(scaler, [opt]))
    return module, opt, scaler, seen, steps


def assert_same_state(trainer, module, optimizers, scaler):
    for (name, mine), theirs in zip(trainer.module.state_dict().items(),
                                    module.state_dict().values()):
        assert torch.equal(mine, theirs), name
    for ours, theirs in zip(trainer.optimizers, optimizers):
        for a, b in zip(ours.state.values(), theirs.state.values()):
            for key in b:
                assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key
    assert trainer.precision.scaler.state_dict() == scaler.state_dict()


def test_float16_accumulation_with_an_open_window_matches_torchs_loop(quiet, capsys):
    """Windows of 3 over 10 batches of unknown count: 3 full windows and one of 1 batch,
    stepped at the epoch end. A batch with an inf gradient skips its window's step (the scale
    halves, the growth tracker restarts); global_step counts it. One unscale per window, the
    nan-gradient report once, and every number bit for bit as the hand-written loop."""
    record = Record()
    torch.manual_seed(0)
    trainer = Trainer(**quiet(**F16, max_nb_epochs=2, accumulate_grad_batches=3,
                              gradient_clip=0.5, print_nan_grads=True, callbacks=[record]))
    trainer.fit(Scaled())
    module, opt, scaler, seen, steps = reference_accumulation(2, 3, 0.5)
    assert steps == 8 and trainer.global_step == steps
    assert record.unscales == steps
    assert record.seen == seen
    assert seen[INF_AT][0] == seen[INF_AT + 1][0] * 2  # the skip halved the scale
    assert_same_state(trainer, module, [opt], scaler)
    printed = capsys.readouterr().out
    assert printed.count('non-finite gradient in layer.weight') == 1


class Gan(RootModule):
    """Two optimizers taking turns 2:1; the second's loss reads the first's layer (frozen
    while the second trains). Optimizer 0 has a step-wise scheduler, optimizer 1 an
    epoch-wise one; optimizer 1's gradients get an inf once."""

    def __init__(self):
        super().__init__()
        self.layer, self.other = nn.Linear(32, 2), nn.Linear(32, 2)

    def training_step(self, batch, batch_nb, optimizer_i):
        x, y = batch
        if optimizer_i == 0:
            return nn.functional.cross_entropy(self.layer(x), y)
        return nn.functional.cross_entropy(self.other(x) + self.layer(x), y)

    def on_after_backward(self):
        if self.trainer.state.total_batches == INF_AT + 1:  # optimizer 1's turn
            self.other.bias.grad[0] = math.inf

    def configure_optimizers(self):
        first = torch.optim.Adam(self.layer.parameters(), lr=0.01)
        second = torch.optim.SGD(self.other.parameters(), lr=0.1)
        step_wise = torch.optim.lr_scheduler.StepLR(first, 3, gamma=0.5)
        epoch_wise = torch.optim.lr_scheduler.StepLR(second, 1, gamma=0.1)
        return [{'optimizer': first, 'frequency': 2,
                 'lr_scheduler': {'scheduler': step_wise, 'interval': 'step'}},
                {'optimizer': second, 'frequency': 1, 'lr_scheduler': epoch_wise}]

    def train_dataloader(self):
        return DataLoader(batches(), batch_size=None)


def reference_gan(nb_epochs):
    torch.manual_seed(0)
    module = Gan()
    configs = module.configure_optimizers()
    opts = [c['optimizer'] for c in configs]
    step_wise, epoch_wise = configs[0]['lr_scheduler']['scheduler'], configs[1]['lr_scheduler']
    scaler = torch.amp.GradScaler('cpu')
    seen, count = [], 0
    for _ in range(nb_epochs):
        for x, y in batches():
            opt_i = 0 if count % 3 < 2 else 1
            frozen = module.layer.parameters() if opt_i else ()
            for p in frozen:
                p.requires_grad_(False)
            with torch.autocast('cpu', dtype=torch.float16):
                loss = module.training_step((x, y), count, opt_i)
            scaler.scale(loss).backward()
            module.layer.requires_grad_(True)
            if count == INF_AT + 1:
                module.other.bias.grad[0] = math.inf
            scaler.unscale_(opts[opt_i])
            torch.nn.utils.clip_grad_norm_(opts[opt_i].param_groups[0]['params'], 1.0)
            scaler.step(opts[opt_i])
            opts[opt_i].zero_grad()
            scaler.update()
            if opt_i == 0:
                step_wise.step()
            count += 1
            seen.append(snapshot(scaler, opts))
        seen.append(snapshot(scaler, opts))  # on_epoch_end runs before the schedulers
        epoch_wise.step()
    return module, opts, scaler, seen


def test_float16_two_optimizers_with_frequencies_match_torchs_loop(quiet):
    """Each batch steps only the optimizer whose turn it is, through one scaler: one unscale
    and one update per batch, a skipped step of optimizer 1 lowers the scale for both, the
    schedulers step on their own optimizer's steps and epochs, global_step counts batches."""
    record = Record()
    torch.manual_seed(0)
    trainer = Trainer(**quiet(**F16, max_nb_epochs=2, gradient_clip=1.0, callbacks=[record]))
    trainer.fit(Gan())
    module, opts, scaler, seen = reference_gan(2)
    assert trainer.global_step == 20 and record.unscales == 20
    assert trainer.state.optimizer_steps == [14, 6]
    assert record.seen == seen
    assert_same_state(trainer, module, opts, scaler)


def test_grad_norms_of_an_epoch_end_step_do_not_reach_the_next_epochs_row(tmp_path):
    """track_grad_norm: the step of a window left open at the epoch end is taken after its
    batch's row; a row whose batch closes no window has no norms (docs/trainer.md), so the
    first row of the next epoch, written inside a window, carries none of them."""
    from test_logger_interface import Recording, kwargs
    logger = Recording()
    # windows of 3 over 10 batches: the 11th batch (epoch 1, batch 0) writes a row and closes
    # no window; the epoch-end step just before it took norms while a row was due next. The
    # 33rd (epoch 3, batch 2) closes a window: its row has that window's norms.
    trainer = Trainer(**kwargs(tmp_path, **F16, logger=logger, add_log_row_interval=11,
                               track_grad_norm=2, accumulate_grad_batches=3, max_nb_epochs=4))
    trainer.fit(Scaled())
    rows = [call[1] for call in logger.calls if call[0] == 'metrics']
    assert [(row['epoch'], row['global_step']) for row in rows] == [(1, 4), (2, 8), (3, 13)]
    assert [sorted(key for key in row if key.startswith('grad_')) for row in rows] == [
        [], [], ['grad_2_norm_layer.bias', 'grad_2_norm_layer.weight', 'grad_2_norm_total']]

"""Mixed precision and the closure/optimizer-step path as researchers combine them, on the
CPU: float16 with a GradScaler('cpu') against a hand-written torch loop (accumulation with a
window left open at the epoch end, clipping, print_nan_grads, a skipped step, two optimizers
with frequencies, step- and epoch-wise schedulers), LBFGS, classic ``optimizer_step``
overrides, and a mid-epoch resume compared with an uninterrupted run."""
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from pytorch_lightning import MisconfigurationException, RootModule, Trainer
from pytorch_lightning.callbacks import Callback

from models import make_loader

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
    """The scaler's (scale, growth tracker) and the lr after every batch and epoch end; the
    gradients on_before_optimizer_step sees; how often the gradient hooks run."""

    def __init__(self):
        self.seen, self.unscales, self.grads = [], 0, []
        self.backwards = self.zero_grads = 0

    def on_after_backward(self, trainer, module):
        self.backwards += 1

    def on_before_optimizer_step(self, trainer, module, optimizer, optimizer_i):
        grad = module.layer.weight.grad
        self.grads.append(None if grad is None else grad.clone())

    def on_before_zero_grad(self, trainer, module, optimizer):
        self.zero_grads += 1

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


def warm_up(optimizer, global_step):
    for group in optimizer.param_groups:
        group['lr'] = 0.1 * min(1.0, (global_step + 1) / 3)


def reference_accumulation(nb_epochs, acc, clip, override=None):
    """Scaled's run as torch's documented GradScaler recipe, written by hand; ``override``:
    'warm-up' sets the lr before each step, 'lazy' never steps."""
    torch.manual_seed(0)
    module = Scaled()
    config = module.configure_optimizers()
    opt, sched = config['optimizer'], config['lr_scheduler']['scheduler']
    scaler = torch.amp.GradScaler('cpu')
    seen, count, steps, grads = [], 0, 0, []

    def close():
        scaler.unscale_(opt)
        grads.append(module.layer.weight.grad.clone())
        torch.nn.utils.clip_grad_norm_(list(module.parameters()), clip)
        if override == 'warm-up':
            warm_up(opt, steps)
        if override != 'lazy':
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
    return module, opt, scaler, seen, steps, grads


def same(a, b):
    """Equal to the bit, through the tensors, lists and dicts of an optimizer's state."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def assert_same_state(trainer, module, optimizers, scaler_state):
    for (name, mine), theirs in zip(trainer.module.state_dict().items(),
                                    module.state_dict().values()):
        assert torch.equal(mine, theirs), name
    for ours, theirs in zip(trainer.optimizers, optimizers):
        assert same(ours.state_dict(), theirs.state_dict())
    assert trainer.precision.state_dict() == scaler_state


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
    module, opt, scaler, seen, steps, grads = reference_accumulation(2, 3, 0.5)
    assert steps == 8 and trainer.global_step == steps
    assert record.unscales == record.zero_grads == steps and record.backwards == 20
    # on_before_optimizer_step: the window's whole sum, unscaled (the inf one included)
    assert len(record.grads) == steps and all(map(torch.equal, record.grads, grads))
    assert record.seen == seen
    assert seen[INF_AT][0] == seen[INF_AT + 1][0] * 2  # the skip halved the scale
    assert_same_state(trainer, module, [opt], {'scaler': scaler.state_dict()})
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
    assert_same_state(trainer, module, opts, {'scaler': scaler.state_dict()})


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


class Shuffled(Scaled):
    """Scaled on a shuffled loader with len() (10 batches); the inf only where a scaler
    skips its step."""

    def on_after_backward(self):
        if self.trainer.precision.scaler is not None:
            super().on_after_backward()

    def train_dataloader(self):
        return make_loader(80, 8, shuffle=True)


class SaveAt(Callback):
    def __init__(self, at, path):
        self.at, self.path = at, path

    def on_save_point(self, trainer, module):
        if trainer.state.total_batches == self.at and not trainer._epoch_done:
            trainer.save_checkpoint(self.path)


def final_state(trainer):
    precision = trainer.precision.state_dict()
    return (trainer.global_step, trainer.module.state_dict(), trainer.optimizers[0].state_dict(),
            trainer.lr_schedulers[0].state_dict(), precision)


@pytest.mark.parametrize('amp_dtype', ['float16', 'bfloat16'])
@pytest.mark.parametrize('save_at', [
    5,   # mid-window: 2 batches summed, one with an inf gradient (scaled, under float16)
    13,  # epoch 1, first batch of its second window, after the skip lowered the scale
])
def test_mid_epoch_resume_under_amp_is_bit_exact(quiet, tmp_path, amp_dtype, save_at):
    """save_checkpoint at a mid-epoch save point, then a fresh Trainer resumes it: weights,
    optimizer, scheduler and scaler state as the uninterrupted run's, bit for bit."""
    args = dict(use_amp=True, amp_dtype=amp_dtype, max_nb_epochs=2, accumulate_grad_batches=3,
                gradient_clip=0.5)
    path = tmp_path / 'mid.ckpt'
    torch.manual_seed(0)
    whole = Trainer(**quiet(**args, callbacks=[SaveAt(save_at, path)]))
    whole.fit(Shuffled())
    torch.manual_seed(1)  # a different init: the checkpoint must bring everything back
    resumed = Trainer(**quiet(**args, resume_from_checkpoint=str(path)))
    resumed.fit(Shuffled())
    expected, got = final_state(whole), final_state(resumed)
    assert got[0] == expected[0] == 8
    for name, value in expected[1].items():
        assert torch.equal(got[1][name], value), name
    for key, value in expected[2]['state'][0].items():
        assert torch.equal(got[2]['state'][0][key], value), key
    assert got[3] == expected[3] and got[4] == expected[4]
    if amp_dtype == 'float16':
        assert expected[4]['scaler']['scale'] < 65536.0  # the skipped step is in both


class Lbfgs(RootModule):
    """LBFGS through a classic override that passes the closure on (and warms up the lr);
    counts every hook the docs' LBFGS table names."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(32, 2)
        self.counts = dict.fromkeys(['training_step', 'on_after_backward', 'on_batch_start',
                                     'optimizer_step', 'on_before_zero_grad', 'on_batch_end',
                                     'on_before_optimizer_step', 'on_save_point'], 0)

    def count(self, name):
        self.counts[name] += 1

    def training_step(self, batch, batch_nb):
        self.count('training_step')
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def on_after_backward(self):
        self.count('on_after_backward')

    def on_batch_start(self, batch):
        self.count('on_batch_start')

    def on_before_zero_grad(self, optimizer):
        self.count('on_before_zero_grad')

    def on_batch_end(self):
        self.count('on_batch_end')

    def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i,
                       second_order_closure=None):
        self.count('optimizer_step')
        for group in optimizer.param_groups:
            group['lr'] = 0.5 * min(1.0, (self.trainer.global_step + 1) / 3)
        optimizer.step(second_order_closure)

    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4, history_size=3)

    def train_dataloader(self):
        return DataLoader(batches(5), batch_size=None)


def reference_lbfgs(amp_dtype, clip):
    torch.manual_seed(0)
    module = Lbfgs()
    opt = module.configure_optimizers()
    context = (torch.autocast('cpu', dtype=torch.bfloat16) if amp_dtype
               else torch.enable_grad())
    for step, batch in enumerate(batches(5)):
        calls = []

        def closure():
            if calls:
                opt.zero_grad()
            calls.append(1)
            with context:
                loss = nn.functional.cross_entropy(module.layer(batch[0]), batch[1])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(module.parameters()), clip)
            return loss
        for group in opt.param_groups:
            group['lr'] = 0.5 * min(1.0, (step + 1) / 3)
        opt.step(closure)
        opt.zero_grad()
    return module, opt


@pytest.mark.parametrize('amp_dtype', [None, 'bfloat16'])
def test_lbfgs_with_a_second_order_closure_override_matches_torchs_loop(quiet, amp_dtype):
    """float32 and bfloat16: LBFGS evaluates the closure several times per batch; the
    per-evaluation hooks run per evaluation, the per-batch ones once per batch
    (docs/devices.md), global_step counts batches, and the weights are torch's loop's."""
    amp = dict(use_amp=True, amp_dtype=amp_dtype) if amp_dtype else {}
    torch.manual_seed(0)
    model = Lbfgs()

    class Count(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer, optimizer_i):
            model.count('on_before_optimizer_step')

        def on_save_point(self, trainer, module):
            model.count('on_save_point')

    trainer = Trainer(**quiet(**amp, gradient_clip=1.0, callbacks=[Count()]))
    trainer.fit(model)
    module, opt = reference_lbfgs(amp_dtype, 1.0)
    counts = model.counts
    assert trainer.global_step == 5
    assert counts['training_step'] == counts['on_after_backward'] > 5
    assert counts['on_before_optimizer_step'] == counts['training_step']
    assert counts['on_save_point'] == 5 + 1  # each batch's, then the epoch's
    assert all(counts[name] == 5 for name in ['on_batch_start', 'optimizer_step',
                                               'on_before_zero_grad', 'on_batch_end'])
    assert_same_state(trainer, module, [opt], {})
    assert trainer.optimizers[0].state_dict()['state'][0]['func_evals'] == counts['training_step']



class TwoAccumulating(Gan):
    """Gan's two optimizers, both every batch (no frequencies), so their windows
    accumulate side by side; optimizer 1's gradient gets an inf in a window's first batch."""

    def on_after_backward(self):
        state = self.trainer.state
        if state.total_batches == 2 and self.other.bias.grad is not None:  # optimizer 1's
            self.other.bias.grad[0] = math.inf

    def configure_optimizers(self):
        return [torch.optim.SGD(self.layer.parameters(), lr=0.1),
                torch.optim.SGD(self.other.parameters(), lr=0.1)]


def test_print_nan_grads_reports_a_gradient_once_when_its_optimizer_steps(quiet, capsys):
    """Two optimizers accumulating over windows of 2 under float16: when optimizer 0's window
    closes, optimizer 1's gradients are a scaled partial sum; print_nan_grads reports the
    (unscaled) gradients of the optimizer about to step, so the inf is printed once, with
    optimizer 1's step, whose window the scaler skips."""
    torch.manual_seed(0)
    trainer = Trainer(**quiet(**F16, accumulate_grad_batches=2, print_nan_grads=True))
    trainer.fit(TwoAccumulating())
    printed = capsys.readouterr().out
    assert printed.count('non-finite gradient in') == 1
    assert printed.count('non-finite gradient in other.bias') == 1


class NormsAtStep(Callback):
    """Each parameter's true gradient norm when its optimizer steps (after the trainer's own
    callbacks, so before clipping as they see it)."""

    def __init__(self):
        self.norms = {}

    def on_before_optimizer_step(self, trainer, module, optimizer, optimizer_i):
        own = {id(p) for p in optimizer.param_groups[0]['params']}
        for name, param in module.named_parameters():
            if id(param) in own:
                self.norms[trainer.state.total_batches, name] = float(param.grad.norm())


def test_grad_norms_of_two_optimizers_are_each_taken_when_it_steps(tmp_path):
    """track_grad_norm with two optimizers (a GAN's, both every batch, accumulating under
    float16): the row has every parameter's norm, each taken from its own optimizer's true
    window gradients, and the total over all of them."""
    from test_logger_interface import Recording, kwargs
    logger, seen = Recording(), NormsAtStep()

    class Quiet(TwoAccumulating):
        def on_after_backward(self):
            pass

    torch.manual_seed(0)
    trainer = Trainer(**kwargs(tmp_path, **F16, logger=logger, add_log_row_interval=4,
                               track_grad_norm=2, accumulate_grad_batches=2,
                               callbacks=[seen]))
    trainer.fit(Quiet())
    rows = [(call[2], call[1]) for call in logger.calls if call[0] == 'metrics']
    assert [step for step, _ in rows] == [4, 8]
    for step, row in rows:
        names = ['layer.weight', 'layer.bias', 'other.weight', 'other.bias']
        for name in names:
            assert row[f'grad_2_norm_{name}'] == round(seen.norms[step - 1, name], 4), name
        total = math.sqrt(sum(seen.norms[step - 1, name] ** 2 for name in names))
        assert row['grad_2_norm_total'] == pytest.approx(total, abs=2e-4)


class WarmUp(Scaled):
    def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i):
        warm_up(optimizer, self.trainer.global_step)
        optimizer.step()


class Lazy(Scaled):
    def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i):
        pass


@pytest.mark.parametrize('override, model', [('warm-up', WarmUp), ('lazy', Lazy)])
def test_classic_optimizer_step_override_under_float16_matches_torchs_loop(
        quiet, override, model):
    """A classic override (a warm-up of the lr) under float16 with accumulation, an open
    window, clipping and a skipped step: its optimizer.step() is the scaler's step, so the run
    is torch's loop's bit for bit. An override that never steps is warned about once; the
    scaler still unscales and updates once per window, as a hand loop that skips the step."""
    record = Record()
    torch.manual_seed(0)
    trainer = Trainer(**quiet(**F16, max_nb_epochs=2, accumulate_grad_batches=3,
                              gradient_clip=0.5, callbacks=[record]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        trainer.fit(model())
        module, opt, scaler, seen, steps, _ = reference_accumulation(2, 3, 0.5, override)
    assert trainer.global_step == steps == record.unscales == 8
    assert record.seen == seen
    assert_same_state(trainer, module, [opt], {'scaler': scaler.state_dict()})
    no_step = [w for w in caught if 'did not call optimizer.step()' in str(w.message)]
    assert len(no_step) == (override == 'lazy')


class Finite(Scaled):
    """Scaled without the injected inf (which float32 has no scaler to skip)."""

    def on_after_backward(self):
        pass


@pytest.mark.parametrize('base, amp', [(Finite, {}), (Scaled, F16), (Lbfgs, {}),
                                       (Lbfgs, dict(use_amp=True, amp_dtype='bfloat16'))])
def test_the_classic_step_without_the_closure_runs_it(quiet, base, amp):
    """0.5.x's warm-up snippet takes second_order_closure but calls optimizer.step() without
    it (0.5.x ran forward and backward before the hook). That step runs the closure: the run
    equals one whose override passes the closure on, bit for bit, in every precision, with
    SGD or LBFGS (neither the GradScaler's assertion nor LBFGS's TypeError)."""
    class Passes(base):
        def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i,
                           second_order_closure=None):
            optimizer.step(second_order_closure)

    class Classic(base):
        def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i,
                           second_order_closure=None):
            optimizer.step()
            optimizer.zero_grad()

    runs = []
    for cls in (Passes, Classic):
        torch.manual_seed(0)
        trainer = Trainer(**quiet(**amp))
        trainer.fit(cls())
        runs.append(trainer)
    passes, classic = runs
    assert classic.global_step == passes.global_step > 0
    for (name, mine), theirs in zip(classic.module.state_dict().items(),
                                    passes.module.state_dict().values()):
        assert torch.equal(mine, theirs), name
    assert same(classic.optimizers[0].state_dict(), passes.optimizers[0].state_dict())
    assert classic.precision.state_dict() == passes.precision.state_dict()


@pytest.mark.parametrize('args, message', [
    (F16, 'LBFGS.*float16'),
    (dict(accumulate_grad_batches={1: 2}), r'LBFGS.*accumulate_grad_batches=\{1: 2\}'),
])
def test_lbfgs_with_float16_or_accumulation_is_refused_before_the_first_batch(
        quiet, args, message):
    model = Lbfgs()
    with pytest.raises(MisconfigurationException, match=message):
        Trainer(**quiet(**args)).fit(model)
    assert model.counts['training_step'] == model.counts['on_batch_start'] == 0


def test_lbfgs_mid_epoch_resume_under_bfloat16_is_bit_exact(quiet, tmp_path):
    """LBFGS's state (its history lists, the previous loss) goes through the checkpoint: the
    resumed run ends where the uninterrupted one does."""
    args = dict(use_amp=True, amp_dtype='bfloat16', max_nb_epochs=2)
    path = tmp_path / 'mid.ckpt'
    torch.manual_seed(0)
    whole = Trainer(**quiet(**args, callbacks=[SaveAt(7, path)]))
    whole.fit(Lbfgs())
    torch.manual_seed(1)
    resumed = Trainer(**quiet(**args, resume_from_checkpoint=str(path)))
    resumed.fit(Lbfgs())
    assert resumed.global_step == whole.global_step == 10
    assert same(resumed.module.state_dict(), whole.module.state_dict())
    assert same(resumed.optimizers[0].state_dict(), whole.optimizers[0].state_dict())


class TwoOnAStream(TwoAccumulating):
    """TwoAccumulating on a loader without len(): windows of 3 leave one open."""

    def train_dataloader(self):
        return DataLoader(Stream(), batch_size=None)


def reference_two_accumulating(nb_epochs, acc):
    torch.manual_seed(0)
    module = TwoOnAStream()
    opts = module.configure_optimizers()
    scaler = torch.amp.GradScaler('cpu')
    seen, count = [], 0

    def step(opt):
        scaler.unscale_(opt)
        scaler.step(opt)
        opt.zero_grad()

    for _ in range(nb_epochs):
        position = 0
        for x, y in batches():
            closes = position + 1 == acc
            for opt_i, opt in enumerate(opts):
                module.layer.requires_grad_(opt_i == 0)
                with torch.autocast('cpu', dtype=torch.float16):
                    loss = module.training_step((x, y), count, opt_i)
                scaler.scale(loss / acc).backward()
                module.layer.requires_grad_(True)
                if count == 2 and opt_i == 1:
                    module.other.bias.grad[0] = math.inf
                if closes:
                    step(opt)
            if closes:
                scaler.update()
            position = 0 if closes else position + 1
            count += 1
            seen.append(snapshot(scaler, opts))
        if position:
            for opt in opts:
                step(opt)
            scaler.update()
        seen.append(snapshot(scaler, opts))
    return module, opts, scaler, seen


def test_float16_two_optimizers_accumulating_with_an_open_window_match_torchs_loop(quiet):
    """Both optimizers every batch, windows of 3 over 10 batches of unknown count: each
    optimizer unscales and steps once per window (the open one at the epoch end too), one
    scaler update per window; an inf in optimizer 1's window skips its step only."""
    record = Record()
    torch.manual_seed(0)
    trainer = Trainer(**quiet(**F16, max_nb_epochs=2, accumulate_grad_batches=3,
                              callbacks=[record]))
    trainer.fit(TwoOnAStream())
    module, opts, scaler, seen = reference_two_accumulating(2, 3)
    assert trainer.global_step == 8 and record.unscales == record.zero_grads == 16
    assert trainer.state.optimizer_steps == [8, 8]
    assert record.seen == seen
    assert_same_state(trainer, module, opts, {'scaler': scaler.state_dict()})

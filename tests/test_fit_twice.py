"""Each fit is a new run (docs/trainer.md, "Fitting again"): a second ``fit`` on a Trainer
gives bit for bit what a fresh Trainer gives.

One pattern for every feature: ``t = Trainer(**X); t.fit(B1); t.fit(A1)`` against
``Trainer(**X).fit(A2)``, with A1 and A2 built from the same seed and the global random state
(torch, numpy, random) set to the same value right before each of the two compared fits. A1's
weights must equal A2's, and so must what the trainer shows of the run: counters, metrics,
optimizer, scheduler and precision state, callback state, the checkpoint written last and the
rows logged. The first fit (B1) is a different model, so whatever it leaves behind differs."""
import csv
import dataclasses
import multiprocessing
import os
import random
import warnings
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models import TinyModel, TrainOnlyModel
from pytorch_lightning import Trainer, checkpoint_io
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from test_devices_loop import LBFGSModel
from test_optimizer_dicts import GAN
from test_several_loaders import TwoValLoaders
from test_tbptt import Echo


# ---------------------------------------------------------------------------- models
class TwoOptimizers(TinyModel):
    """GAN-style: two Adam optimizers over two halves, both stepping on every batch."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.critic = nn.Linear(32, 2)

    def training_step(self, data_batch, batch_nb, optimizer_i):
        x, y = data_batch
        net = self.critic if optimizer_i == 0 else self.layer
        loss = nn.functional.cross_entropy(net(x), y)
        return {'loss': loss, 'prog': {f'loss_{optimizer_i}': loss}}

    def configure_optimizers(self):
        return [torch.optim.Adam(self.critic.parameters(), lr=0.01),
                torch.optim.Adam(self.layer.parameters(), lr=0.01)]


class FrequenciesAndStepSchedulers(GAN):
    """Optimizer dicts taking turns (frequencies 3 and 1), each with a step-wise scheduler."""

    def __init__(self, **kwargs):
        super().__init__(frequencies=(3, 1), **kwargs)

    def configure_optimizers(self):
        dicts = super().configure_optimizers()
        for i, config in enumerate(dicts):
            config['lr_scheduler'] = {
                'scheduler': torch.optim.lr_scheduler.StepLR(config['optimizer'], 1, gamma=0.9),
                'interval': 'step', 'frequency': i + 1}
        return dicts


class EpochScheduler(TinyModel):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.5)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)]


class Plateau(TinyModel):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.5)
        return [opt], [torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0,
                                                                  threshold=0.5)]


class Noisy(TinyModel):
    """Draws from every global RNG in training_step (dropout-like noise), so a run depends on
    the random state at its start."""

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        noise = torch.randn_like(x) * 0.1 + float(np.random.rand()) * 0.01 + random.random() * 0.01
        loss = nn.functional.cross_entropy(self(x + noise), y)
        return {'loss': loss, 'prog': {'train_loss': loss}, 'log': {'train_loss': loss}}


def _worker_data(n=72):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, 32, generator=gen)
    return TensorDataset(x, (x[:, 0] > 0).long())


class WorkerModel(TinyModel):
    """Trains on the DataLoader it was given (shuffled from the global RNG, 2 persistent
    workers): a user keeps one loader object and hands it to every model."""

    def __init__(self, loader, **kwargs):
        super().__init__(**kwargs)
        self.loader = loader

    @property
    def tng_dataloader(self):
        return self.loader


def worker_loader():
    return DataLoader(_worker_data(), batch_size=8, shuffle=True, num_workers=2,
                      persistent_workers=True)


class SkipsSteps(TrainOnlyModel):
    """An optimizer_step override that forgets optimizer.step() on batch 0: fit warns once."""

    def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i):
        if batch_nb:
            optimizer.step()


# ---------------------------------------------------------------------------- the pattern
@dataclasses.dataclass
class Case:
    make: Callable                       # seed -> a fresh model
    kwargs: Callable                     # root folder -> Trainer kwargs (a new callback each)
    tweak: Callable = lambda trainer: None   # after construction (e.g. the lazy device path)
    logs: bool = False                   # compare the logged rows (experiment=None)
    checkpoints: str = None              # ModelCheckpoint folder under the root, to compare
    test: bool = False                   # trainer.test() after the fit, compared too


def quiet_kwargs(root, **overrides):
    kwargs = dict(default_save_path=str(root), experiment=False, progress_bar=False,
                  print_weights_summary=False, max_nb_epochs=2, nb_sanity_val_steps=2)
    kwargs.update(overrides)
    return kwargs


def logged_kwargs(root, **overrides):
    return quiet_kwargs(root, experiment=None, add_log_row_interval=2, **overrides)


def seeded(make):
    def build(seed):
        torch.manual_seed(seed)
        return make()
    return build


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


CASES = {
    'defaults': Case(seeded(TinyModel), quiet_kwargs),
    'accumulate_open_window': Case(  # 7 batches per epoch in windows of 3: 3, 3, then 1
        seeded(lambda: TinyModel(n=56)),
        lambda root: quiet_kwargs(root, accumulate_grad_batches=3)),
    'two_optimizers': Case(seeded(TwoOptimizers), quiet_kwargs),
    'frequencies_step_schedulers': Case(  # 7 batches: the 3+1 cycle crosses the epoch end
        seeded(lambda: FrequenciesAndStepSchedulers(n=56)), quiet_kwargs),
    'epoch_scheduler': Case(seeded(EpochScheduler), lambda root: quiet_kwargs(root,
                                                                             max_nb_epochs=3)),
    'reduce_on_plateau': Case(seeded(Plateau), lambda root: quiet_kwargs(root, max_nb_epochs=3)),
    'amp_bfloat16': Case(seeded(TinyModel),
                         lambda root: quiet_kwargs(root, use_amp=True, amp_dtype='bfloat16')),
    'amp_float16': Case(seeded(TinyModel),
                        lambda root: quiet_kwargs(root, use_amp=True, amp_dtype='float16')),
    'lbfgs': Case(seeded(lambda: LBFGSModel(batch_size=32)), quiet_kwargs),
    'tbptt': Case(seeded(lambda: Echo(seq=6)),
                  lambda root: quiet_kwargs(root, truncated_bptt_steps=3)),
    'clip_grad_norm_logged': Case(
        seeded(Noisy),
        lambda root: logged_kwargs(root, gradient_clip=0.1, track_grad_norm=2), logs=True),
    'early_stop_every_n_steps': Case(  # val_loss never improves by 10: stops after epoch 2
        seeded(TinyModel),
        lambda root: quiet_kwargs(
            root, max_nb_epochs=6, min_nb_epochs=2,
            early_stop_callback=EarlyStopping(min_delta=10.0, patience=1),
            checkpoint_callback=ModelCheckpoint(os.path.join(root, 'ckpt'), every_n_steps=3)),
        checkpoints='ckpt'),
    'lazy_nan_check_mid_epoch_validation': Case(
        seeded(Noisy), lambda root: quiet_kwargs(root, val_check_interval=0.5,
                                                 add_log_row_interval=3),
        tweak=lambda trainer: setattr(trainer.device, 'cheap_item', False)),
    'several_val_loaders': Case(seeded(TwoValLoaders), quiet_kwargs, test=True),
    'optimizer_step_override_warns': Case(seeded(SkipsSteps), quiet_kwargs),
    'test_after_fit': Case(seeded(Noisy), logged_kwargs, logs=True, test=True),
}


def _fit(trainer, model, seed=7):
    """``fit`` from the global random state ``seed``; returns the warnings it gave."""
    seed_everything(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        trainer.fit(model)
    return [str(w.message) for w in caught]


def run_case(case, root, second):
    """``(trainer, model, warnings)`` of the compared fit: a fresh Trainer's first fit, or
    (``second``) the second fit of a Trainer whose first fit trained another model."""
    trainer = Trainer(**case.kwargs(root))
    case.tweak(trainer)
    if second:
        _fit(trainer, case.make(123), seed=99)
    model = case.make(0)
    return trainer, model, _fit(trainer, model)


def assert_same(a, b, where, roots=('', '')):
    """Deep equality of two results (tensors bit for bit); strings that hold the runs' root
    folders (``roots``: the two runs' folders, or lists of folders, innermost first) are
    compared relative to them."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), (where, a, b)
        for key in a:
            assert_same(a[key], b[key], f'{where}[{key!r}]', roots)
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]', roots)
    elif isinstance(a, str) and roots[0]:
        assert relative(a, roots[0]) == relative(b, roots[1]), where
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, where  # NaN (e.g. a running loss before any)
    else:
        assert a == b, (where, a, b)


def relative(text, folders):
    for i, folder in enumerate([folders] if isinstance(folders, str) else folders):
        text = text.replace(folder, f'<folder {i}>')
    return text


def without_functions(state):
    """A scheduler's state_dict without the lambdas some schedulers keep."""
    return {k: v for k, v in state.items() if not callable(v) and k != 'lr_lambdas'}


def visible_results(trainer, model):
    return {
        'params': dict(model.state_dict()),
        'trainer_state': trainer.state.state_dict(),
        'current_epoch': trainer.current_epoch,
        'global_step': trainer.global_step,
        'callback_metrics': trainer.callback_metrics,
        'val_metrics': trainer.val_metrics,
        'tqdm_metrics': trainer.tqdm_metrics,
        'running_loss': trainer.running_loss(),
        'optimizers': [opt.state_dict() for opt in trainer.optimizers],
        'lr_schedulers': [without_functions(s.state_dict()) for s in trainer.lr_schedulers],
        'precision': trainer.precision.state_dict(),
        'callbacks': [cb.state_dict() for cb in trainer.checkpointed_callbacks],
    }


def log_folder(trainer):
    return os.path.dirname(trainer.default_checkpoint_dir())


def log_rows(trainer):
    with open(os.path.join(log_folder(trainer), 'metrics.csv')) as f:
        return [{k: v for k, v in row.items() if k != 'created_at'} for row in csv.DictReader(f)]


@pytest.mark.parametrize('name', list(CASES))
def test_a_second_fit_is_the_same_run_as_a_fresh_trainers_first(name, tmp_path):
    case = CASES[name]
    roots = str(tmp_path / 'second'), str(tmp_path / 'fresh')
    again, model_1, warned_1 = run_case(case, roots[0], second=True)
    fresh, model_2, warned_2 = run_case(case, roots[1], second=False)

    assert warned_1 == warned_2
    if case.logs:  # by design each fit logs into a new version: compare inside the versions
        roots = tuple([log_folder(trainer), root] for trainer, root in zip((again, fresh), roots))
    assert_same(visible_results(again, model_1), visible_results(fresh, model_2), name, roots)
    if case.logs:  # by design each fit logs into a new version, with the same rows
        assert again.logger.version == 1 and fresh.logger.version == 0
        assert log_rows(again) == log_rows(fresh)
    if case.checkpoints:
        last = [checkpoint_io.load(os.path.join(root, case.checkpoints, 'last.ckpt'))
                for root in roots]
        assert_same(last[0], last[1], 'last.ckpt', roots)
    if case.test:
        seed_everything(3)
        tested_1 = again.test()
        seed_everything(3)
        tested_2 = fresh.test()
        assert_same(tested_1, tested_2, 'test()')
        assert_same(again.callback_metrics, fresh.callback_metrics, 'after test()')


def test_the_same_loader_object_with_persistent_workers_serves_both_fits(tmp_path):
    """The user's one DataLoader (2 persistent workers, shuffled from the global RNG) is
    handed to both models of the reused Trainer; a fresh Trainer gets an equal new one."""
    shared = worker_loader()
    case = Case(lambda seed: seeded(lambda: WorkerModel(shared))(seed), quiet_kwargs)
    again, model_1, _ = run_case(case, tmp_path / 'second', second=True)
    fresh_case = Case(seeded(lambda: WorkerModel(worker_loader())), quiet_kwargs)
    fresh, model_2, _ = run_case(fresh_case, tmp_path / 'fresh', second=False)
    roots = str(tmp_path / 'second'), str(tmp_path / 'fresh')
    assert_same(visible_results(again, model_1), visible_results(fresh, model_2), 'workers',
                roots)
    assert not multiprocessing.active_children()  # fit stopped the workers of its copies


def test_fit_stops_the_persistent_workers_of_the_loader_copy_it_made(quiet):
    """fit iterates its own copy of a plain training DataLoader (around the resumable
    sampler); that copy's persistent workers end with fit. The user's loader is untouched."""
    loader = worker_loader()
    before = set(multiprocessing.active_children())
    trainer = Trainer(**quiet(max_nb_epochs=2, nb_sanity_val_steps=0))
    trainer.fit(WorkerModel(loader))
    assert trainer._train_loader is not loader and loader._iterator is None
    assert set(multiprocessing.active_children()) == before

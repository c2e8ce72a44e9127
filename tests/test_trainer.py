"""End-to-end behaviour of the loop on tiny CPU models."""
import copy

import pytest
import torch
from torch import nn

from pytorch_lightning import RootModule, Trainer
from pytorch_lightning.callbacks import Callback

from models import TinyModel, TrainOnlyModel, make_loader


class Counting(Callback):
    def __init__(self):
        self.validations, self.batches, self.epochs = 0, 0, 0

    def on_validation_end(self, trainer, module, metrics):
        self.validations += 1

    def on_batch_end(self, trainer, module):
        self.batches += 1

    def on_epoch_end(self, trainer, module):
        self.epochs += 1


class SGDModel(TinyModel):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def manual_accumulated(model, batches, windows, lr=0.1):
    """Reference: SGD where each window's gradient is the mean of its batches' gradients."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    it = iter(batches)
    for size in windows:
        for _ in range(size):
            x, y = next(it)
            (nn.functional.cross_entropy(model(x), y) / size).backward()
        opt.step()
        opt.zero_grad()
    return model


def test_accumulation_handles_short_last_window(quiet):
    torch.manual_seed(0)
    model = SGDModel(n=40, batch_size=8)  # 5 batches: windows of 2, 2, 1
    reference = manual_accumulated(model, list(model.tng_dataloader), [2, 2, 1])
    trainer = Trainer(**quiet(accumulate_grad_batches=2, nb_sanity_val_steps=0))
    trainer.fit(model)
    assert trainer.global_step == 3
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_accumulation_schedule_by_epoch(quiet):
    trainer = Trainer(**quiet(max_nb_epochs=3, accumulate_grad_batches={1: 2, 2: 4},
                              nb_sanity_val_steps=0))
    trainer.fit(SGDModel(n=64, batch_size=8))  # 8 batches: 8 + 4 + 2 steps
    assert trainer.global_step == 14


def test_gradient_clip_caps_total_norm_before_step(quiet):
    norms = []

    class Clipped(SGDModel):
        def training_step(self, data_batch, batch_nb):
            loss, logs = super().training_step(data_batch, batch_nb)
            return loss * 1000, logs

        def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i):
            norms.append(torch.norm(torch.stack([p.grad.norm() for p in self.parameters()])).item())
            optimizer.step()

    Trainer(**quiet(gradient_clip=0.5, nb_sanity_val_steps=0)).fit(Clipped())
    assert norms and max(norms) <= 0.5 + 1e-5


def test_multiple_optimizers_only_touch_their_own_parameters(quiet):
    seen = []

    class TwoPart(RootModule):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 2), nn.Linear(32, 2)

        def training_step(self, data_batch, batch_nb, optimizer_i):
            x, y = data_batch
            loss = nn.functional.cross_entropy(self.a(x) + self.b(x), y)
            return {'loss': loss, 'prog': {f'loss_{optimizer_i}': loss}}

        def on_after_backward(self):
            seen.append((self.a.weight.grad is not None, self.b.weight.grad is not None))

        def configure_optimizers(self):
            return [torch.optim.SGD(self.a.parameters(), lr=0.1),
                    torch.optim.SGD(self.b.parameters(), lr=0.1)]

        @property
        def tng_dataloader(self):
            return make_loader(16, 8)

    model = TwoPart()
    trainer = Trainer(**quiet())
    trainer.fit(model)
    assert seen == [(True, False), (False, True)] * 2
    assert set(trainer.last_prog) == {'loss_0', 'loss_1'}
    assert all(p.requires_grad for p in model.parameters())


def test_lr_scheduler_steps_once_per_epoch(quiet):
    class Scheduled(SGDModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    trainer = Trainer(**quiet(max_nb_epochs=3, nb_sanity_val_steps=0))
    trainer.fit(Scheduled())
    assert trainer.optimizers[0].param_groups[0]['lr'] == pytest.approx(0.125)


def test_reduce_on_plateau_gets_val_loss(quiet):
    class Plateau(SGDModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
            return [opt], [self.sched]

    class ValLosses(Callback):
        values = []

        def on_validation_end(self, trainer, module, metrics):
            self.values.append(metrics['val_loss'].item())

    model = Plateau()
    Trainer(**quiet(max_nb_epochs=3, nb_sanity_val_steps=0, callbacks=[ValLosses()])).fit(model)
    assert model.sched.last_epoch == 3
    assert model.sched.best == pytest.approx(min(ValLosses.values))


@pytest.mark.parametrize('interval,epochs,every_n,expected', [
    (1.0, 2, 1, 2), (0.5, 2, 1, 4), (0.25, 1, 1, 4), (3, 1, 1, 2), (1.0, 4, 2, 2),
])
def test_validation_points(quiet, interval, epochs, every_n, expected):
    counter = Counting()
    trainer = Trainer(**quiet(max_nb_epochs=epochs, val_check_interval=interval,
                              check_val_every_n_epoch=every_n, callbacks=[counter]))
    trainer.fit(TinyModel(n=64, batch_size=8))  # 8 batches per epoch
    assert counter.validations == expected


def test_percent_checks_limit_batches(quiet):
    seen = {'train': 0, 'val': 0}

    class Counted(TinyModel):
        def training_step(self, data_batch, batch_nb):
            seen['train'] += 1
            return super().training_step(data_batch, batch_nb)

        def validation_step(self, data_batch, batch_nb):
            seen['val'] += 1
            return super().validation_step(data_batch, batch_nb)

    Trainer(**quiet(train_percent_check=0.5, val_percent_check=0.5,
                    nb_sanity_val_steps=0)).fit(Counted(n=64, batch_size=8))
    assert seen == {'train': 4, 'val': 2}


def test_fast_dev_run_runs_one_batch_each(quiet):
    counter = Counting()
    trainer = Trainer(**quiet(fast_dev_run=True, max_nb_epochs=50, callbacks=[counter]))
    trainer.fit(TinyModel())
    assert (counter.batches, counter.validations, counter.epochs) == (1, 1, 1)


def test_overfit_pct_limits_all_loops(quiet):
    trainer = Trainer(**quiet(overfit_pct=0.25))
    trainer.fit(TinyModel(n=64, batch_size=8))
    assert trainer.nb_training_batches == 2 and trainer.nb_val_batches == 1


def test_on_batch_start_minus_one_ends_epoch(quiet):
    class Stopper(TinyModel):
        def on_batch_start(self, batch):
            return -1 if self.trainer.state.batch_idx == 3 else None

    counter = Counting()
    trainer = Trainer(**quiet(max_nb_epochs=2, nb_sanity_val_steps=0, callbacks=[counter]))
    trainer.fit(Stopper())
    assert counter.batches == 6 and counter.epochs == 2


def test_should_stop_respects_min_nb_epochs(quiet):
    class StopAtOnce(Callback):
        def on_validation_end(self, trainer, module, metrics):
            trainer.state.should_stop = True

    counter = Counting()
    trainer = Trainer(**quiet(max_nb_epochs=10, min_nb_epochs=3, nb_sanity_val_steps=0,
                              callbacks=[StopAtOnce(), counter]))
    trainer.fit(TinyModel(n=16))
    assert counter.epochs == 3 and trainer.current_epoch == 2


def test_dataloaders_read_once_per_fit(quiet):
    reads = []

    class Lazy(TrainOnlyModel):
        def train_dataloader(self):
            reads.append(1)
            return make_loader(32, 8)

    Trainer(**quiet(max_nb_epochs=3)).fit(Lazy())
    assert reads == [1]


def test_step_outputs_reach_bar_logs_and_callbacks(quiet):
    class DictOut(TinyModel):
        def training_step(self, data_batch, batch_nb):
            loss, _ = super().training_step(data_batch, batch_nb)
            return {'loss': loss, 'prog': {'shown': loss * 2}, 'log': {'logged_only': loss * 3}}

    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.fit(DictOut())
    bar = trainer.tqdm_metrics
    assert 'shown' in bar and 'logged_only' not in bar and 'val_acc' in bar
    assert isinstance(bar['shown'], float)
    cbm = trainer.callback_metrics
    assert {'shown', 'logged_only', 'loss', 'val_loss', 'val_acc'} <= set(cbm)
    assert torch.isclose(cbm['logged_only'], cbm['loss'] * 3)


def test_validation_tuple_adds_val_loss_and_default_end_averages(quiet):
    outputs_seen = []

    class Collect(TinyModel):
        def validation_end(self, outputs):
            outputs_seen.extend(outputs)
            return super().validation_end(outputs)

    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.fit(Collect())
    assert all(set(o) == {'val_acc', 'val_loss'} for o in outputs_seen)
    mean = torch.stack([o['val_loss'] for o in outputs_seen]).mean()
    torch.testing.assert_close(trainer.callback_metrics['val_loss'], mean)


def test_model_is_back_in_train_mode_after_validation(quiet):
    modes = []

    class Modes(TinyModel):
        def training_step(self, data_batch, batch_nb):
            modes.append(self.training)
            return super().training_step(data_batch, batch_nb)

        def validation_step(self, data_batch, batch_nb):
            modes.append(self.training)
            assert not torch.is_grad_enabled()
            return super().validation_step(data_batch, batch_nb)

    Trainer(**quiet(val_check_interval=0.5, nb_sanity_val_steps=1)).fit(Modes(n=32))
    assert modes[0] is False and modes[1] is True and True in modes[2:] and False in modes[2:]


def test_hparams_assigned_after_construction_and_training_learns(quiet):
    import argparse
    model = TinyModel(n=256, batch_size=16)
    model.hparams = argparse.Namespace(lr=0.05)
    trainer = Trainer(**quiet(max_nb_epochs=5))
    trainer.fit(model)
    assert trainer.hparams_dict() == {'lr': 0.05}
    assert trainer.callback_metrics['val_acc'] > 0.8
    assert trainer.test()['test_acc'] > 0.8


def test_unknown_length_loader_validates_at_epoch_end(quiet):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            gen = torch.Generator().manual_seed(0)
            for _ in range(5):
                x = torch.randn(8, 32, generator=gen)
                yield x, (x[:, 0] > 0).long()

    class Streaming(TinyModel):
        @property
        def tng_dataloader(self):
            return torch.utils.data.DataLoader(Stream(), batch_size=None)

    counter = Counting()
    trainer = Trainer(**quiet(max_nb_epochs=2, accumulate_grad_batches=2,
                              nb_sanity_val_steps=0, callbacks=[counter]))
    trainer.fit(Streaming())
    assert counter.batches == 10 and counter.validations == 2
    assert trainer.global_step == 6  # windows 2, 2, 1 per epoch


def test_reduce_on_plateau_only_steps_after_validated_epochs(quiet):
    class Plateau(SGDModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return [opt], [self.sched]

    model = Plateau()
    Trainer(**quiet(max_nb_epochs=4, check_val_every_n_epoch=2)).fit(model)
    assert model.sched.last_epoch == 2


def test_reduce_on_plateau_without_validation_is_refused(quiet):
    from pytorch_lightning import MisconfigurationException

    class Plateau(TrainOnlyModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return [opt], [torch.optim.lr_scheduler.ReduceLROnPlateau(opt)]

    with pytest.raises(MisconfigurationException, match='ReduceLROnPlateau.*no validation'):
        Trainer(**quiet()).fit(Plateau())


def test_unsized_val_loader_with_sized_train_loader(quiet):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(make_loader(16, 8))

    class StreamVal(TinyModel):
        @property
        def val_dataloader(self):
            return torch.utils.data.DataLoader(Stream(), batch_size=None)

    counter = Counting()
    Trainer(**quiet(callbacks=[counter], nb_sanity_val_steps=0)).fit(StreamVal())
    assert counter.validations == 1


def test_step_output_subclasses_are_accepted(quiet):
    import collections

    class Ordered(TinyModel):
        def training_step(self, data_batch, batch_nb):
            loss, _ = super().training_step(data_batch, batch_nb)
            return collections.OrderedDict(loss=loss, prog={'p': loss})

    trainer = Trainer(**quiet())
    trainer.fit(Ordered())
    assert 'p' in trainer.last_prog


def test_numpy_int_val_check_interval_counts_batches(quiet):
    import numpy as np
    counter = Counting()
    Trainer(**quiet(val_check_interval=np.int64(2), callbacks=[counter],
                    nb_sanity_val_steps=0)).fit(TinyModel(n=64))
    assert counter.validations == 4


def test_fast_dev_run_ignores_int_val_check_interval(quiet):
    counter = Counting()
    Trainer(**quiet(fast_dev_run=True, val_check_interval=5, callbacks=[counter])).fit(TinyModel())
    assert counter.validations == 1


def test_stop_requested_before_min_epochs_runs_them_fully(quiet):
    class StopOnce(Callback):
        def on_validation_end(self, trainer, module, metrics):
            if trainer.current_epoch == 0:
                trainer.state.should_stop = True

    counter = Counting()
    Trainer(**quiet(max_nb_epochs=10, min_nb_epochs=3, nb_sanity_val_steps=0,
                    callbacks=[StopOnce(), counter])).fit(TinyModel(n=64))
    assert counter.epochs == 3 and counter.batches == 24


def test_fit_twice_runs_the_epochs_again(quiet):
    counter = Counting()
    trainer = Trainer(**quiet(max_nb_epochs=2, nb_sanity_val_steps=0, callbacks=[counter]))
    model = TinyModel(n=32)
    trainer.fit(model)
    trainer.fit(model)
    assert counter.epochs == 4 and trainer.global_step == 8 and trainer.current_epoch == 1


def test_error_with_several_optimizers_restores_requires_grad(quiet):
    class Fails(RootModule):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 2), nn.Linear(32, 2)

        def training_step(self, data_batch, batch_nb, optimizer_i):
            if optimizer_i == 1:
                raise ValueError('boom')
            x, y = data_batch
            return nn.functional.cross_entropy(self.a(x) + self.b(x), y)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.a.parameters(), lr=0.1),
                    torch.optim.SGD(self.b.parameters(), lr=0.1)]

        def train_dataloader(self):
            return make_loader(16, 8)

    model = Fails()
    with pytest.raises(ValueError, match='boom'):
        Trainer(**quiet()).fit(model)
    assert all(p.requires_grad for p in model.parameters())


def test_fit_switches_model_to_train_mode(quiet):
    modes = []

    class Mode(TrainOnlyModel):
        def training_step(self, data_batch):
            modes.append(self.training)
            return super().training_step(data_batch)

    model = Mode()
    model.eval()
    Trainer(**quiet()).fit(model)
    assert modes and all(modes)


def test_percent_limit_loads_no_extra_batch(quiet):
    loaded = []

    class Counted(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            loaded.append(i)
            return torch.zeros(32), 0

    class Limited(TrainOnlyModel):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(Counted(), batch_size=8)

    Trainer(**quiet(train_percent_check=0.5)).fit(Limited())
    assert len(loaded) == 32

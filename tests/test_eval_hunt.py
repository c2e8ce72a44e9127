"""Evaluation and data handling in the combinations researchers use: validation points inside
accumulation windows, several val/test loaders (one empty), ``test()`` after and without
``fit``, submodule train/eval modes around evaluation, and the trainer's copy of a training
DataLoader drawing exactly the batches the user's own loader draws."""
import csv
import glob

import pytest
import torch
from torch import nn
from torch.utils.data import (BatchSampler, DataLoader, Sampler, TensorDataset,
                              WeightedRandomSampler)

from models import TinyModel, make_loader
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.data import release_workers
from pytorch_lightning.exceptions import MisconfigurationException


class SGDModel(TinyModel):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


# ---------------------------------------------------------------- modes around evaluation
class FrozenNorm(SGDModel):
    """Fine-tuning with a frozen BatchNorm: the user puts it in eval mode at each epoch start
    (``fit`` switches the whole model to train mode first); its running statistics must not
    move. Records the modes in every step."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = nn.BatchNorm1d(32)
        self.train_modes, self.val_modes = [], []

    def on_epoch_start(self):
        self.norm.eval()

    def forward(self, x):
        return self.layer(self.norm(x))

    def training_step(self, data_batch, batch_nb):
        self.train_modes.append((self.training, self.norm.training))
        return super().training_step(data_batch, batch_nb)

    def validation_step(self, data_batch, batch_nb):
        self.val_modes.append((self.training, self.norm.training, torch.is_grad_enabled()))
        return super().validation_step(data_batch, batch_nb)


def test_a_submodule_frozen_in_eval_mode_stays_frozen_across_validation_and_test(quiet):
    """docs/trainer.md: the model is "returned to its previous mode" after validation. A
    BatchNorm the user froze must stay in eval mode, and its running stats must not move."""
    model = FrozenNorm(n=32)
    stats = model.norm.running_mean.clone()
    trainer = Trainer(**quiet(val_check_interval=2, nb_sanity_val_steps=0, max_nb_epochs=2))
    trainer.fit(model)
    assert set(model.val_modes) == {(False, False, False)}
    assert model.train_modes and set(model.train_modes) == {(True, False)}
    assert torch.equal(model.norm.running_mean, stats)
    trainer.test()
    assert model.training and not model.norm.training


def test_validation_end_raising_restores_modes_and_grad_mode(quiet):
    """docs/trainer.md: an error in a validation loop leaves the model in the modes it had
    and gradients on (the ``no_grad`` of the evaluation is left too)."""
    class Fails(FrozenNorm):
        def validation_end(self, outputs):
            raise ValueError('boom')

    model = Fails(n=32)
    with pytest.raises(ValueError, match='boom'):
        Trainer(**quiet(val_check_interval=2, nb_sanity_val_steps=0)).fit(model)
    assert model.training and not model.norm.training and torch.is_grad_enabled()


# ---------------------------------------------------------------- validation inside a window
class Indexed(SGDModel):
    """Training data is the sample index (a float column) plus features: each training step
    records which samples it saw; validation records the gradient it finds on the layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen, self.grads_at_validation = [], []

    def training_step(self, data_batch, batch_nb):
        index, x, y = data_batch
        self.seen.append(index.long().tolist())
        return super().training_step((x, y), batch_nb)

    def validation_step(self, data_batch, batch_nb):
        if batch_nb == 0:
            grad = self.layer.weight.grad
            self.grads_at_validation.append(None if grad is None else grad.clone())
        return super().validation_step(data_batch, batch_nb)

    @property
    def tng_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, 32, generator=gen)
        dataset = TensorDataset(torch.arange(self.n).float(), x, (x[:, 0] > 0).long())
        return DataLoader(dataset, batch_size=self.batch_size)


def test_validation_inside_an_accumulation_window_leaves_the_window_intact(quiet):
    """Validation after batch 2 of a 3-batch window sees the half-summed gradient and leaves
    it as it was: the run trains exactly as one without validation points."""
    torch.manual_seed(0)
    plain = Indexed(n=48)
    torch.manual_seed(0)
    validated = Indexed(n=48)
    Trainer(**quiet(accumulate_grad_batches=3, val_check_interval=1.0,
                    nb_sanity_val_steps=0)).fit(plain)
    Trainer(**quiet(accumulate_grad_batches=3, val_check_interval=2,
                    nb_sanity_val_steps=0)).fit(validated)
    assert validated.seen == plain.seen
    for a, b in zip(plain.parameters(), validated.parameters()):
        assert torch.equal(a, b)
    # after batches 2 (window 1 of 3 batches: 2 summed), 4 (window 2: 1 summed), 6 (closed)
    grads = validated.grads_at_validation
    assert len(grads) == 3 and grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert grads[2] is None or grads[2].abs().sum() == 0


def test_fraction_interval_counts_the_limited_epoch(quiet):
    """docs/trainer.md: a float interval is ``max(1, int(nb_training_batches * f))`` of the
    batches ``train_percent_check`` leaves: 12 batches, half of them, 0.5 -> every 3."""
    calls = []

    class Count(Callback):
        def on_validation_end(self, trainer, module, metrics):
            calls.append(trainer.state.batch_idx)

    model = Indexed(n=96)
    Trainer(**quiet(train_percent_check=0.5, val_check_interval=0.5, nb_sanity_val_steps=0,
                    accumulate_grad_batches=2, callbacks=[Count()])).fit(model)
    assert calls == [2, 5] and len(model.seen) == 6


# ---------------------------------------------------------------- the trainer's loader copy
def _dataset(n=40):
    x = torch.randn(n, 32, generator=torch.Generator().manual_seed(n))
    return TensorDataset(torch.arange(n).float(), x, (x[:, 0] > 0).long())


class EvenOddBatches(Sampler):
    """A user's batch sampler: even indices in pairs, then odd ones in threes, shuffled by
    its own generator."""

    def __init__(self, n, seed):
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        even = [i for i in order if i % 2 == 0]
        odd = [i for i in order if i % 2]
        yield from (even[i:i + 2] for i in range(0, len(even), 2))
        yield from (odd[i:i + 3] for i in range(0, len(odd), 3))

    def __len__(self):
        return len(range(0, (self.n + 1) // 2, 2)) + len(range(0, self.n // 2, 3))


LOADERS = {
    'generator shuffle': lambda: DataLoader(
        _dataset(), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(3)),
    'drop_last shuffle': lambda: DataLoader(
        _dataset(), batch_size=6, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(4)),
    'weighted sampler': lambda: DataLoader(
        _dataset(), batch_size=5, sampler=WeightedRandomSampler(
            torch.linspace(0.1, 1.0, 40), 30, generator=torch.Generator().manual_seed(5))),
    'custom batch sampler': lambda: DataLoader(_dataset(), batch_sampler=EvenOddBatches(40, 6)),
    'batch sampler over a sampler': lambda: DataLoader(_dataset(), batch_sampler=BatchSampler(
        WeightedRandomSampler(torch.ones(40), 40, generator=torch.Generator().manual_seed(7)),
        batch_size=7, drop_last=True)),
}


@pytest.mark.parametrize('name', sorted(LOADERS))
def test_the_trainers_copy_draws_the_users_batches_in_order(quiet, name):
    """The trainer rebuilds the user's DataLoader around a resumable batch sampler; over
    two epochs with validation points, it trains on exactly the batches
    the user's own loader yields, in order (the user's loader seeded the same way)."""
    class Model(Indexed):
        @property
        def tng_dataloader(self):
            return LOADERS[name]()

    model = Model()
    Trainer(**quiet(max_nb_epochs=2, val_check_interval=2, nb_sanity_val_steps=0,
                    early_stop_callback=False, checkpoint_callback=False)).fit(model)
    own = LOADERS[name]()
    expected = [batch[0].long().tolist() for _ in range(2) for batch in own]
    assert model.seen == expected


# ---------------------------------------------------------------- several loaders, test()
class ThreeValLoaders(SGDModel):
    """Val loaders of 3, 0 and 1 batches; two test loaders; steps take ``dataloader_i``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.val_calls, self.ends = [], []

    def validation_step(self, data_batch, batch_nb, dataloader_i):
        self.val_calls.append((dataloader_i, batch_nb))
        return super().validation_step(data_batch, batch_nb)

    def validation_end(self, outputs):
        self.ends.append([len(out) for out in outputs])
        return super().validation_end(outputs)

    def test_step(self, data_batch, batch_nb, dataloader_i):
        out = super().test_step(data_batch, batch_nb)
        return {**out, 'test_loss': nn.functional.cross_entropy(self(data_batch[0]),
                                                                data_batch[1])}

    @property
    def val_dataloader(self):
        return [make_loader(24, 8, seed=1), make_loader(0, 8, seed=3), make_loader(8, 8, seed=4)]

    @property
    def test_dataloader(self):
        return [make_loader(24, 8, seed=2), make_loader(16, 8, seed=5)]


def test_an_empty_val_loader_among_several_gets_an_empty_list(quiet):
    model = ThreeValLoaders(n=32)
    trainer = Trainer(**quiet(val_check_interval=2, nb_sanity_val_steps=1,
                              checkpoint_callback=False))
    trainer.fit(model)
    assert model.ends == [[1, 0, 1], [3, 0, 1], [3, 0, 1]]
    assert trainer.nb_val_batches == 4
    metrics = trainer.callback_metrics
    assert 'val_loss/0' in metrics and 'val_loss/2' in metrics
    assert not any(key.endswith('/1') for key in metrics)


def test_test_twice_after_fit_and_on_a_fresh_trainer_agree(quiet, tmp_path):
    """``test()`` twice gives the same metrics and a log row each; ``test(model)`` on a new
    Trainer (never fitted) gives them too, and the model keeps its modes."""
    model = ThreeValLoaders(n=32)
    trainer = Trainer(**quiet(experiment=None, checkpoint_callback=False,
                              nb_sanity_val_steps=0))
    trainer.fit(model)
    first, second = trainer.test(), trainer.test()
    assert set(first) >= {'test_loss/0', 'test_loss/1', 'test_acc/1'}
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key])
    fresh = Trainer(**quiet(experiment=False, progress_bar=True))
    model.eval()
    third = fresh.test(model)
    assert not model.training
    for key in first:
        assert torch.equal(first[key], third[key])
    logged = glob.glob(str(tmp_path / 'lightning_logs' / 'version_0' / 'metrics.csv'))
    with open(logged[0]) as rows:
        test_rows = [row for row in csv.DictReader(rows) if row.get('test_loss/1')]
    assert len(test_rows) == 2


def test_persistent_workers_for_train_and_a_limited_val_loader(quiet):
    """Train and val loaders with two persistent workers each, ``val_percent_check=0.5``
    and a validation point every 3 batches: every validation reads the same first half of the
    val set (a persistent iterator left half-read restarts at the top), and training gets the
    user's shuffled batches, two epochs running."""
    class Workers(Indexed):
        def validation_step(self, data_batch, batch_nb):
            self.val_seen.append(data_batch[0].long().tolist())
            return {'val_loss': nn.functional.cross_entropy(self(data_batch[1]), data_batch[2])}

        @property
        def tng_dataloader(self):
            return DataLoader(_dataset(24), batch_size=4, shuffle=True, num_workers=2,
                              persistent_workers=True,
                              generator=torch.Generator().manual_seed(8))

        @property
        def val_dataloader(self):
            return self._val  # one loader object, as a cached property would give

    model = Workers()
    model.val_seen = []
    model._val = DataLoader(_dataset(32), batch_size=4, num_workers=2, persistent_workers=True)
    Trainer(**quiet(max_nb_epochs=2, val_check_interval=3, val_percent_check=0.5,
                    nb_sanity_val_steps=0, checkpoint_callback=False,
                    early_stop_callback=False)).fit(model)
    first_half = [list(range(i, i + 4)) for i in range(0, 16, 4)]
    assert model.val_seen == first_half * 4
    own = DataLoader(_dataset(24), batch_size=4, shuffle=True, num_workers=2,
                     persistent_workers=True, generator=torch.Generator().manual_seed(8))
    assert model.seen == [batch[0].long().tolist() for _ in range(2) for batch in own]
    release_workers(own)  # now, not when a later test collects them
    release_workers(model._val)


def test_plateau_scheduler_skips_an_epoch_that_ended_before_its_validation_point(quiet):
    """docs/trainer.md: "In an epoch without validation it is not stepped." Epoch 1 ends at
    its second batch (``on_batch_start`` returns -1), before its only validation point: the
    scheduler must not step on epoch 0's ``val_loss`` a second time."""
    class EndsEarly(SGDModel):
        def on_batch_start(self, batch):
            if self.trainer.current_epoch == 1 and self.trainer.state.batch_idx == 2:
                return -1

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
            return [optimizer], [self.plateau]

    model = EndsEarly(n=32)
    Trainer(**quiet(max_nb_epochs=3, nb_sanity_val_steps=0, checkpoint_callback=False,
                    early_stop_callback=False)).fit(model)
    assert model.plateau.last_epoch == 2  # stepped after epochs 0 and 2


class Plateau(SGDModel):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
        return [optimizer], [self.plateau]


class SaveThenStop(Callback):
    """Saves a checkpoint at the save point after training batch ``at`` of epoch 0, then
    stops the run there."""

    def __init__(self, path, at):
        self.path, self.at = path, at

    def on_save_point(self, trainer, module):
        if trainer.current_epoch == 0 and trainer.state.batch_idx == self.at:
            trainer.save_checkpoint(self.path)
            raise RuntimeError('stop here')


def test_resumed_after_the_epochs_validation_point_the_plateau_scheduler_still_steps(
        quiet, tmp_path):
    """5 batches, validation after batches 2 and 4; saved after batch 4, resumed: the rest of
    epoch 0 has no validation point, yet the epoch validated, so the scheduler steps as in
    the uninterrupted run."""
    args = dict(max_nb_epochs=2, val_check_interval=2, nb_sanity_val_steps=0,
                checkpoint_callback=False, early_stop_callback=False)
    torch.manual_seed(0)
    whole = Plateau(n=40)
    Trainer(**quiet(**args)).fit(whole)
    torch.manual_seed(0)
    path = tmp_path / 'mid.ckpt'
    with pytest.raises(RuntimeError, match='stop here'):
        Trainer(**quiet(callbacks=[SaveThenStop(path, at=3)], **args)).fit(Plateau(n=40))
    resumed = Plateau(n=40)
    Trainer(**quiet(resume_from_checkpoint=str(path), **args)).fit(resumed)
    assert resumed.plateau.state_dict() == whole.plateau.state_dict()
    assert whole.plateau.last_epoch == 2
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_an_iterable_dataset_with_a_length_loads_no_batch_past_it(quiet):
    """A stream whose ``__len__`` says 3 batches but that could go on: each epoch loads 3."""
    produced = []

    class Stream(torch.utils.data.IterableDataset):
        def __len__(self):
            return 3

        def __iter__(self):
            for i in range(100):
                produced.append(i)
                x = torch.randn(4, 32)
                yield torch.full((4,), float(i)), x, (x[:, 0] > 0).long()

    class Model(Indexed):
        @property
        def tng_dataloader(self):
            return DataLoader(Stream(), batch_size=None)

    Trainer(**quiet(max_nb_epochs=2, nb_sanity_val_steps=0, checkpoint_callback=False)).fit(
        Model())
    assert produced == [0, 1, 2] * 2


def test_a_stream_without_len_validates_every_n_batches_inside_windows(quiet):
    """docs/trainer.md: for a training loader without ``len()`` an int interval works as for
    any loader. 7 batches, windows of 2, a validation point every 3 batches: validations
    after batches 3 and 6 (inside windows), none at the epoch end, 4 optimizer steps."""
    calls = []

    class Count(Callback):
        def on_validation_end(self, trainer, module, metrics):
            calls.append((trainer.current_epoch, trainer.state.batch_idx,
                          trainer.state.accumulation_position))

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            gen = torch.Generator().manual_seed(0)
            for i in range(7):
                x = torch.randn(4, 32, generator=gen)
                yield torch.full((4,), float(i)), x, (x[:, 0] > 0).long()

    class Model(Indexed):
        @property
        def tng_dataloader(self):
            return DataLoader(Stream(), batch_size=None)

    model = Model()
    trainer = Trainer(**quiet(max_nb_epochs=2, val_check_interval=3, accumulate_grad_batches=2,
                              nb_sanity_val_steps=0, checkpoint_callback=False,
                              callbacks=[Count()]))
    trainer.fit(model)
    assert calls == [(0, 2, 1), (0, 5, 0), (1, 2, 1), (1, 5, 0)]
    assert trainer.global_step == 8 and len(model.seen) == 14
    assert len(model.grads_at_validation) == 4 and model.grads_at_validation[0].abs().sum() > 0


@pytest.mark.parametrize('stage', ['tng_dataloader', 'val_dataloader'])
def test_a_one_pass_iterator_as_train_or_val_loader_is_refused_before_training(quiet, stage):
    """docs/api.md: the loaders are read once per fit and "the same loader object is then
    iterated in every epoch and every validation run". A generator can be iterated once: the
    second epoch would train on nothing, and validation after the sanity check would see no
    batch and return empty metrics. ``fit`` says so before the first batch; ``test()`` reads
    its loader each call, so an iterator is fine there."""
    class OnePass(TinyModel):
        pass

    setattr(OnePass, stage, property(lambda self: (batch for batch in make_loader(16, 8))))
    calls = []
    OnePass.training_step = lambda self, batch, nb: calls.append(nb) or TinyModel.training_step(
        self, batch, nb)
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet(max_nb_epochs=2)).fit(OnePass())
    message = str(excinfo.value)
    assert f'{stage} returned a generator' in message and 'DataLoader' in message
    assert calls == []

    class OnePassTest(TinyModel):
        @property
        def test_dataloader(self):
            return (batch for batch in make_loader(16, 8))

    assert 'test_acc' in Trainer(**quiet()).test(OnePassTest())


@pytest.mark.parametrize('at', [2, 5])  # right after the validation point; the epoch's last
def test_resume_with_drop_last_and_a_seeded_shuffle_trains_the_same_batches(quiet, tmp_path,
                                                                            at):
    """Saved after training batch ``at`` of epoch 0 (6 batches: 40 samples, batch 6,
    drop_last), resumed: epochs 0 and 1 train on the batches of an uninterrupted run, which
    are the user's loader's, and end with the same weights."""
    class Model(Indexed):
        @property
        def tng_dataloader(self):
            return LOADERS['drop_last shuffle']()

    args = dict(max_nb_epochs=2, val_check_interval=3, nb_sanity_val_steps=0,
                checkpoint_callback=False, early_stop_callback=False)
    torch.manual_seed(0)
    whole = Model()
    Trainer(**quiet(**args)).fit(whole)
    torch.manual_seed(0)
    stopped = Model()
    path = tmp_path / 'mid.ckpt'
    with pytest.raises(RuntimeError, match='stop here'):
        Trainer(**quiet(callbacks=[SaveThenStop(path, at)], **args)).fit(stopped)
    resumed = Model()
    Trainer(**quiet(resume_from_checkpoint=str(path), **args)).fit(resumed)
    assert stopped.seen[:at + 1] + resumed.seen == whole.seen
    own = LOADERS['drop_last shuffle']()
    assert whole.seen == [batch[0].long().tolist() for _ in range(2) for batch in own]
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_resume_after_a_validation_point_with_a_persistent_val_loader_is_exact(quiet,
                                                                               tmp_path):
    """A val loader with persistent workers draws its workers' base seed from the global RNG
    at its first validation only; the run trains with dropout (global RNG). Saved after the
    first validation point, resumed: the same weights as the uninterrupted run."""
    class Dropout(Indexed):
        def forward(self, x):
            return self.layer(nn.functional.dropout(x, 0.5, self.training))

        @property
        def val_dataloader(self):
            if not hasattr(self, '_val'):
                self._val = DataLoader(_dataset(16), batch_size=8, num_workers=2,
                                       persistent_workers=True)
            return self._val

        def validation_step(self, data_batch, batch_nb):
            return {'val_loss': nn.functional.cross_entropy(self(data_batch[1]), data_batch[2])}

    args = dict(max_nb_epochs=1, val_check_interval=2, nb_sanity_val_steps=0, n=48,
                checkpoint_callback=False, early_stop_callback=False)
    n = args.pop('n')
    torch.manual_seed(0)
    whole = Dropout(n=n)
    Trainer(**quiet(**args)).fit(whole)
    torch.manual_seed(0)
    stopped = Dropout(n=n)
    path = tmp_path / 'mid.ckpt'
    with pytest.raises(RuntimeError, match='stop here'):
        Trainer(**quiet(callbacks=[SaveThenStop(path, 1)], **args)).fit(stopped)
    resumed = Dropout(n=n)
    Trainer(**quiet(resume_from_checkpoint=str(path), **args)).fit(resumed)
    for model in (whole, stopped, resumed):  # now, not when a later test collects them
        release_workers(model._val)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

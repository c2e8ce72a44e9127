"""Several validation and test loaders: ``val_dataloader`` / ``test_dataloader`` returning a
list of DataLoaders, the ``dataloader_i`` step argument, one list of outputs per loader in
``*_end``, the default ``*_end``'s suffixed metrics, per-loader limits, and exact resume."""
import signal

import pytest
import torch
from torch import nn

from models import TinyModel, make_loader
from pytorch_lightning import Trainer, checkpoint_io
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.exceptions import MisconfigurationException
from pytorch_lightning.utilities import StepOutputs
from test_resume import assert_same_run, rows, run


class TwoValLoaders(TinyModel):
    """The classic script's shape: two val loaders (4 and 2 batches of 8), two test loaders
    (3 and 1 batches), steps that take ``dataloader_i``; every step call is recorded."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.val_calls, self.test_calls = [], []

    def validation_step(self, data_batch, batch_nb, dataloader_i):
        self.val_calls.append((dataloader_i, batch_nb))
        x, y = data_batch
        out = self(x)
        return {'val_loss': nn.functional.cross_entropy(out, y),
                'val_acc': (out.argmax(1) == y).float().mean()}

    def test_step(self, data_batch, batch_nb, dataloader_i):
        self.test_calls.append((dataloader_i, batch_nb))
        x, y = data_batch
        return {'test_loss': nn.functional.cross_entropy(self(x), y)}

    @property
    def val_dataloader(self):
        return [make_loader(32, 8, seed=1), make_loader(16, 8, seed=3)]

    @property
    def test_dataloader(self):
        return [make_loader(24, 8, seed=2), make_loader(8, 8, seed=4)]


def _mean(model, loader, key='val_loss'):
    with torch.no_grad():
        losses = [nn.functional.cross_entropy(model(x), y) for x, y in loader]
    return torch.stack(losses).mean()


def test_validation_step_gets_dataloader_i_and_end_gets_a_list_per_loader(quiet):
    seen = []

    class Model(TwoValLoaders):
        def validation_end(self, outputs):
            seen.append([len(o) for o in outputs])
            return {'val_loss': torch.stack([o['val_loss'] for o in outputs[1]]).mean()}

    model = Model()
    Trainer(**quiet(nb_sanity_val_steps=0)).fit(model)
    assert model.val_calls == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    assert seen == [[4, 2]]


def test_default_validation_end_suffixes_and_val_loss_is_loader_0s(quiet):
    model = TwoValLoaders()
    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.fit(model)
    metrics = trainer.val_metrics
    assert set(metrics) == {'val_loss', 'val_acc', 'val_loss/0', 'val_acc/0', 'val_loss/1',
                            'val_acc/1'}
    first = _mean(model, make_loader(32, 8, seed=1))
    second = _mean(model, make_loader(16, 8, seed=3))
    assert torch.allclose(metrics['val_loss/0'], first)
    assert torch.allclose(metrics['val_loss/1'], second)
    assert torch.equal(metrics['val_loss'], metrics['val_loss/0'])
    assert torch.equal(metrics['val_acc'], metrics['val_acc/0'])
    assert trainer.callback_metrics['val_loss'] == metrics['val_loss/0']


def test_default_validation_end_on_a_list_of_step_outputs():
    outputs = [StepOutputs([{'val_loss': torch.tensor(1.0)}, {'val_loss': torch.tensor(3.0)}],
                           [1, 3]),
               StepOutputs([torch.tensor(5.0)], [2])]
    metrics = TinyModel().validation_end(outputs)
    assert metrics == {'val_loss': 2.5, 'val_loss/0': 2.5, 'val_loss/1': 5.0}


def test_two_test_loaders(quiet):
    model = TwoValLoaders()
    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.fit(model)
    metrics = trainer.test()
    assert model.test_calls == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert trainer.nb_test_batches == 4
    assert set(metrics) == {'test_loss', 'test_loss/0', 'test_loss/1'}
    assert torch.allclose(metrics['test_loss/1'], _mean(model, make_loader(8, 8, seed=4)))
    assert torch.equal(metrics['test_loss'], metrics['test_loss/0'])


def test_val_percent_check_applies_to_each_loader(quiet):
    model = TwoValLoaders()
    trainer = Trainer(**quiet(nb_sanity_val_steps=0, val_percent_check=0.5))
    trainer.fit(model)
    assert model.val_calls == [(0, 0), (0, 1), (1, 0)]  # half of 4, half of 2
    assert trainer.nb_val_batches == 3  # the total over the loaders


def test_sanity_check_runs_nb_sanity_val_steps_of_each_loader(quiet):
    before_training = []

    class Model(TwoValLoaders):
        def on_epoch_start(self):
            before_training.append(list(self.val_calls))

    Trainer(**quiet(nb_sanity_val_steps=3)).fit(Model())
    assert before_training[0] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]  # 3 of 4, 2 of 2


class CountTicks(Callback):
    def __init__(self):
        self.totals, self.ticks = [], 0

    def on_epoch_start(self, trainer, module):
        self.totals.append(trainer.nb_batches_this_epoch)

    def on_batch_end(self, trainer, module):
        self.ticks += 1

    def on_validation_batch_end(self, trainer, module):
        if trainer.state.stage != 'sanity_check':
            self.ticks += 1


def test_progress_bar_total_counts_every_loader(quiet):
    counter = CountTicks()
    Trainer(**quiet(callbacks=[counter], val_check_interval=0.5)).fit(TwoValLoaders())
    assert counter.totals == [8 + 2 * (4 + 2)]  # 8 training batches, 2 validation points
    assert counter.ticks == counter.totals[0]


class TwoArgStep(TwoValLoaders):
    def validation_step(self, data_batch, batch_nb):
        raise AssertionError('not reached')

    def training_step(self, data_batch, batch_nb):
        raise AssertionError('not reached')


def test_two_argument_step_with_two_loaders_fails_before_the_first_batch(quiet):
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(TwoArgStep())
    message = str(excinfo.value)
    assert 'val_dataloader returned 2 loaders' in message
    assert 'validation_step' in message and 'dataloader_i' in message
    assert 'def validation_step(self, data_batch, batch_nb, dataloader_i)' in message


def test_two_argument_test_step_with_two_loaders_fails_before_the_first_batch(quiet):
    class Model(TwoValLoaders):
        def test_step(self, data_batch, batch_nb):
            raise AssertionError('not reached')

    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    model = Model()
    trainer.fit(model)
    with pytest.raises(MisconfigurationException, match='test_dataloader returned 2 loaders'):
        trainer.test()


def test_a_list_of_one_loader_behaves_like_a_single_loader(quiet):
    seen = []

    class Model(TinyModel):
        def validation_step(self, data_batch, batch_nb):  # two arguments are fine
            return super().validation_step(data_batch, batch_nb)

        def validation_end(self, outputs):
            seen.append(outputs)
            return super().validation_end(outputs)

        @property
        def val_dataloader(self):
            return [make_loader(32, 8, seed=1)]

    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.fit(Model())
    assert len(seen[0]) == 4 and isinstance(seen[0][0], dict)  # flat: one output per batch
    assert set(trainer.val_metrics) == {'val_loss', 'val_acc'}  # no suffixes


def test_one_loader_with_a_three_argument_step_gets_dataloader_i_0(quiet):
    class Model(TwoValLoaders):
        @property
        def val_dataloader(self):
            return make_loader(16, 8, seed=1)

    model = Model()
    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.fit(model)
    assert model.val_calls == [(0, 0), (0, 1)]
    assert set(trainer.val_metrics) == {'val_loss', 'val_acc'}


def test_a_list_mixing_loaders_and_other_things_is_an_error(quiet):
    class Model(TinyModel):
        @property
        def val_dataloader(self):
            return [make_loader(16, 8), None]

    with pytest.raises(MisconfigurationException,
                       match=r'val_dataloader returned a list.*item 1 is NoneType'):
        Trainer(**quiet()).fit(Model())


def test_sigkill_then_resume_with_two_val_loaders_is_bit_exact(tmp_path_factory):
    full = tmp_path_factory.mktemp('full2')
    run(full, full / 'out.pt', '--val-loaders', 2)
    reference = torch.load(full / 'out.pt'), rows(full / 'lightning_logs' / 'version_0')
    assert any(row.get('val_loss/1') for row in reference[1])  # loader 1 was logged
    folder = tmp_path_factory.mktemp('killed2')
    out = folder / 'out.pt'
    run(folder, out, '--kill-at', 19, '--val-loaders', 2, expect=-signal.SIGKILL)
    last = folder / 'ckpt' / 'last.ckpt'
    assert 0 < checkpoint_io.load(last)['lightning']['trainer_state']['total_batches'] <= 19
    run(folder, out, '--resume', last, '--val-loaders', 2)
    assert_same_run(torch.load(out), reference, folder / 'lightning_logs' / 'version_0')

"""What researchers really pass to the accelerator code paths that CI runs on the CPU: batch
types for ``move_to_device``, ``gpus`` values, hand-built DataParallel replica outputs, and the
lazy NaN check (``cheap_item = False``) with the bar and logging off, accumulation, several
optimizers, validation inside the epoch and a NaN at the very last batch."""
import collections
import dataclasses
import math
import types

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from pytorch_lightning import MisconfigurationException, NonFiniteLossError, Trainer
from pytorch_lightning import checkpoint_io
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.placement import parse_gpus
from pytorch_lightning.placement.data_parallel import _slice_size, reduce_replica_outputs
from pytorch_lightning.utilities import NumbersRead, batch_size_of, numbers_only
from pytorch_lightning.utilities.transfer import move_to_device

from models import TinyModel, make_loader
from test_devices_loop import FakeTwoGPUs

META = torch.device('meta')  # a device other than the CPU that needs no accelerator


# ------------------------------------------------------------------------------ transfer
def test_a_packed_sequence_is_moved_with_its_own_to():
    """An RNN batch: ``PackedSequence`` is a namedtuple whose ``batch_sizes`` must stay on
    the CPU; its own ``.to()`` knows that, rebuilding it field by field does not."""
    x = torch.randn(3, 4, 2)
    packed = pack_padded_sequence(x, torch.tensor([4, 3, 2]), batch_first=True)
    out = move_to_device({'seq': packed, 'y': torch.ones(3)}, META)
    assert type(out['seq']) is type(packed) and out['seq'].data.device == META
    assert out['seq'].batch_sizes.device.type == 'cpu'
    assert torch.equal(out['seq'].batch_sizes, packed.batch_sizes)


@dataclasses.dataclass
class Sample:
    x: torch.Tensor


def test_non_tensor_values_and_unknown_objects_stay_as_they_are():
    """Documented: numbers, strings, ``None`` and objects without ``.to`` (a dataclass) stay
    as they are; tuples inside lists are rebuilt."""
    sample = Sample(torch.ones(1))
    batch = {'name': 'a', 'n': 3, 'none': None, 'pairs': [(torch.ones(2), 'id0')],
             'sample': sample}
    out = move_to_device(batch, META)
    assert out['name'] == 'a' and out['n'] == 3 and out['none'] is None
    assert type(out['pairs'][0]) is tuple and out['pairs'][0][0].device == META
    assert out['pairs'][0][1] == 'id0' and out['sample'] is sample


# ------------------------------------------------------------------------------ gpus
@pytest.mark.parametrize('gpus, ids', [
    (np.int64(2), [0, 1]), ([np.int64(1), np.int32(0)], [1, 0]), (np.int64(-1), [0, 1, 2]),
    (' 2 ', [0, 1]), ('1 ,', [1])])
def test_gpus_numpy_ints_and_spaces(gpus, ids):
    assert parse_gpus(gpus, device_count=3) == ids


@pytest.mark.parametrize('gpus, why', [
    (np.bool_(True), 'is not one of the forms'), (False, 'a bool is not one of the forms'),
    (' ', 'must be one integer'), ('+1', 'must be one integer'), ('-1,0', 'must list'),
    (np.array([0, 1]), 'is not one of the forms'), ([np.float32(0)], 'is not a device id'),
    # an empty id (a launch script's "$A,$B,$C" with B unset) is not silently skipped
    ('0,,1', 'must list device ids'), (',1', 'must list device ids'),
    ('0,1,,', 'must list device ids')])
def test_gpus_more_bad_values_name_the_argument_and_the_fix(gpus, why):
    with pytest.raises(MisconfigurationException) as error:
        parse_gpus(gpus, device_count=3)
    message = str(error.value)
    assert message.startswith(f'Trainer(gpus={gpus!r})') and why in message
    assert 'Pass ' in message


@pytest.mark.parametrize('gpus', [10 ** 12, 2 ** 70, '12345678901'])
def test_a_huge_gpu_count_is_refused_without_listing_it(gpus):
    """A job id passed as ``gpus`` by mistake: the error comes at once (no list of a trillion
    ids is built), short, and names the GPUs there are."""
    with pytest.raises(MisconfigurationException) as error:
        parse_gpus(gpus, device_count=2)
    message = str(error.value)
    assert message.startswith(f'Trainer(gpus={gpus!r}) needs GPU 2, 3, ')
    assert 'ids 0, 1' in message and len(message) < 600


def test_bad_gpus_fail_in_the_constructor():
    with pytest.raises(MisconfigurationException, match=r"Trainer\(gpus='0,0'\)"):
        Trainer(gpus='0,0')


# ------------------------------------------------------------------------------ reduction
def test_reduction_of_hand_built_replica_outputs():
    """Uneven slices (5 and 2 samples), a nested dict, Python numbers, a bool, a 0-dim int
    tensor, per-sample tensors of different lengths and ``None`` everywhere."""
    outputs = [
        {'loss': torch.tensor(1.0), 'inner': {'acc': torch.tensor(0.5), 'n': 5, 'f': 1.0},
         'preds': torch.arange(5.0), 'hit': torch.tensor(4), 'ok': True, 'none': None},
        {'loss': torch.tensor(8.0), 'inner': {'acc': torch.tensor(1.0), 'n': 2, 'f': 8.0},
         'preds': torch.arange(5.0, 7.0), 'hit': torch.tensor(2), 'ok': False, 'none': None},
    ]
    out = reduce_replica_outputs(outputs, [5, 2])
    assert out['loss'].item() == pytest.approx((5 * 1.0 + 2 * 8.0) / 7)
    assert out['inner']['acc'].item() == pytest.approx((5 * 0.5 + 2 * 1.0) / 7)
    assert out['inner']['n'] == pytest.approx((25 + 4) / 7) and type(out['inner']['n']) is float
    assert torch.equal(out['preds'], torch.arange(7.0))
    assert out['hit'].dtype == torch.float32 and out['hit'].item() == pytest.approx(24 / 7)
    assert out['ok'] is True and out['none'] is None
    with pytest.raises(ValueError, match=r"\['none'\].*replica 0 returned NoneType"):
        reduce_replica_outputs([{'none': None}, {'none': torch.tensor(1.0)}], [1, 1])


def test_validation_end_gets_one_reduced_output_per_batch(quiet, two_fake_gpus):
    """Batches of 7, 7, 7, 7 and 2 samples: each is split 4 + 3 (the last 1 + 1), and
    validation_end sees one output per batch, with the batch's rows in order and the
    accuracy of the whole batch."""
    seen = {}

    class Model(TinyModel):
        def validation_step(self, data_batch, batch_nb):
            x, y = data_batch
            out = self(x)
            return {'val_acc': (out.argmax(1) == y).float().mean(), 'preds': out.argmax(1),
                    'y': y}

        def validation_end(self, outputs):
            seen['outputs'] = list(outputs)
            seen['sizes'] = list(outputs.batch_sizes)
            return {'val_loss': torch.tensor(0.0)}

        @property
        def val_dataloader(self):
            return make_loader(30, 7, seed=1)

    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.device = FakeTwoGPUs()
    trainer.fit(Model())
    assert seen['sizes'] == [7, 7, 7, 7, 2] and len(seen['outputs']) == 5
    ys = torch.cat([y for _, y in make_loader(30, 7, seed=1)])
    assert torch.equal(torch.cat([out['y'] for out in seen['outputs']]), ys)
    for out in seen['outputs']:
        assert out['val_acc'].item() == pytest.approx(
            (out['preds'] == out['y']).float().mean().item())


# ------------------------------------------------------------------------------ lazy NaN
class NaNAtBatch(TinyModel):
    """TinyModel whose loss is NaN at the training batch ``bad`` of the run (``total_batches``,
    counted from 0), for optimizer ``bad_opt``."""

    def __init__(self, bad, bad_opt=0, optimizers=1, **kwargs):
        super().__init__(**kwargs)
        self.bad, self.bad_opt, self.nb_opt = bad, bad_opt, optimizers

    def training_step(self, data_batch, batch_nb, optimizer_i=0):
        loss, log = super().training_step(data_batch, batch_nb)
        if self.trainer.state.total_batches == self.bad and optimizer_i == self.bad_opt:
            loss = loss * float('nan')
        return loss, log

    def configure_optimizers(self):
        return [torch.optim.SGD(self.parameters(), lr=0.01) for _ in range(self.nb_opt)]


def lazy_trainer(quiet, **kwargs):
    trainer = Trainer(**quiet(**kwargs))
    trainer.device.cheap_item = False
    return trainer


def finite_checkpoint(path):
    weights = checkpoint_io.load(path)['state_dict'].values()
    return all(math.isfinite(w.abs().sum().item()) for w in weights)


@pytest.mark.parametrize('kwargs, bad, covers, saved', [
    (dict(max_nb_epochs=1), 7, '5..7', None),  # the last batch of the fit
    (dict(max_nb_epochs=2), 15, '13..15', 8),  # the last batch of the fit, after an epoch
    (dict(max_nb_epochs=2), 7, '5..7', None),  # the last batch of the first epoch
    (dict(max_nb_epochs=1, accumulate_grad_batches=3), 7, '5..7', None),  # a window left open
    (dict(max_nb_epochs=1, val_check_interval=4), 3, '0..3', None),  # right before validation
])
def test_lazy_nan_at_an_epochs_end_is_raised_before_any_checkpoint(quiet, tmp_path, kwargs,
                                                                   bad, covers, saved):
    """8 batches an epoch; the flag is read at each epoch's end and 5 batches after the last
    read (after 5, 8, 13 and 16 batches): last.ckpt is the one of the last epoch without a
    NaN (``saved`` batches in), or was never written."""
    ckpt = ModelCheckpoint(tmp_path / 'c', monitor='val_acc', save_best_only=False)
    trainer = lazy_trainer(quiet, add_log_row_interval=5, nb_sanity_val_steps=0,
                           checkpoint_callback=ckpt, **kwargs)
    with pytest.raises(NonFiniteLossError, match=rf'in training batches {covers} '):
        trainer.fit(NaNAtBatch(bad))
    last = tmp_path / 'c' / 'last.ckpt'
    if saved is None:
        assert not last.exists()
    else:
        assert checkpoint_io.load(last)['lightning']['trainer_state']['total_batches'] == saved
        assert finite_checkpoint(last)


def test_lazy_nan_of_the_second_optimizer_is_caught(quiet):
    trainer = lazy_trainer(quiet, add_log_row_interval=3, nb_sanity_val_steps=0)
    with pytest.raises(NonFiniteLossError, match=r'in training batches 3\.\.5 '):
        trainer.fit(NaNAtBatch(4, bad_opt=1, optimizers=2))


class OneElementLoss(NaNAtBatch):
    """The second optimizer's loss has shape (1, 1), which the loss contract allows (one
    element); the first's is 0-dim."""

    def training_step(self, data_batch, batch_nb, optimizer_i=0):
        loss, log = super().training_step(data_batch, batch_nb, optimizer_i)
        return (loss.reshape(1, 1) if optimizer_i == 1 else loss), log


@pytest.mark.parametrize('bad, raised', [(None, None), (6, r'in training batches 5\.\.7 ')])
def test_lazy_check_takes_one_element_losses_of_any_shape(quiet, bad, raised):
    """The eager check reads such a loss with .item(); the lazy one keeps it with the 0-dim
    losses of the other optimizer and must sum them all."""
    trainer = lazy_trainer(quiet, add_log_row_interval=5, nb_sanity_val_steps=0)
    model = OneElementLoss(bad, bad_opt=1, optimizers=2)
    if raised is None:
        trainer.fit(model)
        assert trainer.state.total_batches == 8
        assert math.isfinite(trainer.running_loss())
    else:
        with pytest.raises(NonFiniteLossError, match=raised):
            trainer.fit(model)


def test_per_sample_tensors_whose_other_dims_differ_name_the_place():
    """A decoder that stops when every sequence of its slice has ended returns tokens of a
    different length on each replica: they cannot be concatenated, and the error must say
    where and why, like every other difference between replicas."""
    outputs = [{'loss': torch.tensor(1.0), 'tokens': torch.zeros(4, 7, dtype=torch.long)},
               {'loss': torch.tensor(2.0), 'tokens': torch.zeros(3, 5, dtype=torch.long)}]
    with pytest.raises(ValueError, match=r"at the output\['tokens'\]: .*\(4, 7\).*\(3, 5\)"):
        reduce_replica_outputs(outputs, [4, 3])


def test_a_mapping_that_reads_pairs_otherwise_keeps_its_content():
    """``Counter(pairs)`` counts the pairs instead of taking them as items: the batch's counts
    must come out as they went in."""
    counts = collections.Counter(a=2, b=1)
    out = move_to_device({'counts': counts, 'x': torch.ones(1)}, META)
    assert dict(out['counts']) == {'a': 2, 'b': 1} and out['x'].device == META


@pytest.mark.parametrize('make', [collections.UserDict, types.MappingProxyType])
def test_a_mapping_batch_that_is_not_a_dict_has_its_tensors_batch_size(make):
    """A tokenizer's output (a ``UserDict``) holds tensors: ``validation_end``'s
    ``batch_sizes`` must count its samples, not 1 (which weighs a short last batch like a
    full one); the DataParallel slice sizes already walk any mapping."""
    batch = make({'ids': torch.zeros(5, 3, dtype=torch.long), 'mask': torch.ones(5, 3)})
    assert batch_size_of(batch) == 5 == _slice_size(batch)


def test_a_transfer_hook_that_returns_nothing_is_a_clear_error(quiet):
    """An override that moves the batch's tensors in place and forgets ``return batch``:
    the steps would get ``None``; the error names the hook and the fix instead."""
    class InPlace(TinyModel):
        def transfer_batch_to_device(self, batch, device):
            batch[0] = batch[0].to(device)

    trainer = Trainer(**quiet(nb_sanity_val_steps=0))
    trainer.device.transfers_batches = True
    with pytest.raises(MisconfigurationException,
                       match=r'InPlace\.transfer_batch_to_device returned None.*Return the batch'):
        trainer.fit(InPlace())


def test_numbers_read_keeps_large_integers_exact():
    """Integer tensors are read as ints, exactly, also beyond 2**53 (a float64 would round
    them), in the same transfer as the floats."""
    big = 2 ** 53 + 1
    metrics = {'tokens': torch.tensor(big), 'neg': torch.tensor(-big), 'loss': torch.tensor(0.1),
               'small': torch.tensor(7, dtype=torch.int32)}
    numbers = NumbersRead(metrics).numbers()
    assert numbers == {'tokens': big, 'neg': -big, 'loss': pytest.approx(0.1), 'small': 7}
    assert type(numbers['tokens']) is int and type(numbers['loss']) is float
    assert numbers_only(metrics) == numbers

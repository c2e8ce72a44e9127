"""Device building blocks tested without a GPU: the ``gpus`` forms and their errors, batch
transfer, the DataParallel reduction rule and the runner's one-device path, and the GPU device
and precision parts as they are built (which GPU a DDP rank takes, float16 with a scaler)."""
import collections
import contextlib
import threading
import types
import warnings

import pytest
import torch

from pytorch_lightning.exceptions import MisconfigurationException
from pytorch_lightning.placement import (
    CPUDevice, CUDADevice, DataParallelDevice, make_device, make_precision)
from pytorch_lightning.placement.data_parallel import (
    DataParallelRunner, _slice_size, reduce_replica_outputs)
from pytorch_lightning.placement.ddp import DistributedDevice
from pytorch_lightning.placement.gpus import parse_gpus, root_gpu
from pytorch_lightning.utilities.transfer import move_to_device

Pair = collections.namedtuple('Pair', ['x', 'y'])

# ---------------------------------------------------------------------------------- gpus


@pytest.mark.parametrize('gpus', [None, 0, '0', ' 0 ', []])
def test_gpus_forms_meaning_the_cpu(gpus):
    assert parse_gpus(gpus, device_count=0) is None
    assert parse_gpus(gpus, device_count=4) is None


@pytest.mark.parametrize('gpus, ids', [
    (1, [0]), (3, [0, 1, 2]), ('2', [0, 1]), (-1, [0, 1, 2, 3]), ('-1', [0, 1, 2, 3]),
    ([2, 0], [2, 0]), ((1,), [1]), ('0,1', [0, 1]), ('0, 1', [0, 1]), ('3,', [3]),
    (' 1 ,3 ', [1, 3])])
def test_gpus_forms_with_four_gpus(gpus, ids):
    assert parse_gpus(gpus, device_count=4) == ids


def test_gpus_asks_torch_when_no_count_is_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 3)
    assert parse_gpus(-1) == [0, 1, 2]
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(MisconfigurationException, match='CUDA is not available'):
        parse_gpus(1)


@pytest.mark.parametrize('gpus', [1, '1', -1, '0,1', '3,', [0]])
def test_gpus_without_cuda_says_so_and_how_to_train_on_the_cpu(gpus):
    with pytest.raises(MisconfigurationException) as error:
        parse_gpus(gpus, device_count=0)
    message = str(error.value)
    assert f'Trainer(gpus={gpus!r})' in message
    assert 'CUDA is not available' in message and 'gpus=None' in message


@pytest.mark.parametrize('gpus, missing', [(3, 'GPU 2,'), ([0, 5], 'GPU 5,'), ('1,4', 'GPU 4,')])
def test_gpus_naming_devices_that_do_not_exist_lists_those_that_do(gpus, missing):
    with pytest.raises(MisconfigurationException) as error:
        parse_gpus(gpus, device_count=2)
    message = str(error.value)
    assert f'Trainer(gpus={gpus!r})' in message and missing in message
    assert 'ids 0, 1' in message and 'gpus=-1' in message


@pytest.mark.parametrize('gpus, why', [
    (-2, 'a count must be >= 0'), ('-3', 'a count must be >= 0'),
    ([0, 1, 0], 'GPU 0 is listed more than once'), ('1,1', 'GPU 1 is listed more than once'),
    ([-1], 'is not a device id'), ([0.0], 'is not a device id'), ([True], 'is not a device id'),
    (1.0, 'a float is not one of the forms'), (True, 'a bool is not one of the forms'),
    ({0: 1}, 'a dict is not one of the forms'), ('', 'must be one integer'),
    ('gpu0', 'must be one integer'), ('0,a', 'must list device ids'), (',', 'must list'),
    ('0,-1', 'must list device ids')])
def test_gpus_malformed_values_name_the_argument_and_the_forms(gpus, why):
    with pytest.raises(MisconfigurationException) as error:
        parse_gpus(gpus, device_count=8)
    message = str(error.value)
    assert f'Trainer(gpus={gpus!r})' in message and why in message
    assert 'a list of ids like [0, 1]' in message


def test_root_gpu_is_the_first_id():
    assert root_gpu([2, 0]) == 2
    assert root_gpu(None) is None and root_gpu([]) is None


# ------------------------------------------------------------------------------ transfer


class Movable:
    """A custom batch type: records how ``.to`` was called."""

    def __init__(self):
        self.calls = []

    def to(self, device, non_blocking=False):
        self.calls.append((device, non_blocking))
        return ('moved', device)


class MovesWithoutNonBlocking:
    def to(self, device):
        return ('moved', device)


class MovesInPlace:
    def to(self, device, **kwargs):
        self.device = device


def test_nested_batch_moves_every_tensor_and_keeps_the_structure():
    x, y = torch.randn(4, 3), torch.arange(4)
    batch = {'pair': Pair(x, y), 'list': [x, (y, 'label', 7)],
             'ordered': collections.OrderedDict([('b', x), ('a', None)])}
    out = move_to_device(batch, torch.device('meta'))

    assert type(out) is dict and list(out) == ['pair', 'list', 'ordered']
    assert type(out['pair']) is Pair and out['pair'].x.device.type == 'meta'
    assert out['pair'].y.device.type == 'meta' and out['pair'].y.dtype == torch.int64
    assert type(out['list']) is list and out['list'][0].device.type == 'meta'
    assert type(out['list'][1]) is tuple and out['list'][1][0].device.type == 'meta'
    assert out['list'][1][1:] == ('label', 7)
    assert type(out['ordered']) is collections.OrderedDict and list(out['ordered']) == ['b', 'a']
    assert out['ordered']['b'].shape == (4, 3) and out['ordered']['a'] is None
    assert x.device.type == 'cpu'  # the input batch is left as it was


def test_tensors_already_on_the_device_are_not_copied():
    x = torch.randn(2)
    out = move_to_device([x], 'cpu')
    assert out[0] is x


def test_mappings_keep_their_type_where_they_can():
    x = torch.zeros(1)
    counts = collections.defaultdict(list, {'x': x})
    out = move_to_device(counts, 'meta')
    assert type(out) is collections.defaultdict and out.default_factory is list
    assert out['x'].device.type == 'meta'
    proxy = move_to_device(types.MappingProxyType({'x': x}), 'meta')
    assert type(proxy) is dict and proxy['x'].device.type == 'meta'


def test_objects_with_to_are_moved_with_non_blocking_only_towards_cuda():
    movable = Movable()
    assert move_to_device({'m': movable}, 'meta', non_blocking=True)['m'] == (
        'moved', torch.device('meta'))
    # torch.device('cuda') is only a name here: nothing touches CUDA
    move_to_device(movable, 'cuda:1', non_blocking=True)
    move_to_device(movable, 'cuda:1')
    assert movable.calls == [(torch.device('meta'), False), (torch.device('cuda:1'), True),
                             (torch.device('cuda:1'), False)]
    assert move_to_device(MovesWithoutNonBlocking(), 'cuda', True) == (
        'moved', torch.device('cuda'))
    in_place = MovesInPlace()
    assert move_to_device([in_place], 'meta')[0] is in_place
    assert in_place.device == torch.device('meta')


def test_tensors_go_to_cuda_non_blocking_from_pinned_and_pageable_memory(monkeypatch):
    """A blocking copy to CUDA is a host sync (the host waits for the GPU's queued work), from
    pageable memory as from pinned: every copy to CUDA is non-blocking when asked; copies to
    the CPU never are. No CUDA here: record ``Tensor.to`` calls."""
    pinned, pageable = torch.ones(2), torch.zeros(2)
    calls = []
    monkeypatch.setattr(torch.Tensor, 'is_pinned', lambda self: self is pinned)
    monkeypatch.setattr(torch.Tensor, 'to', lambda self, device, non_blocking=False: (
        calls.append((self is pinned, device.type, non_blocking)) or self))
    move_to_device([pinned, pageable], 'cuda', non_blocking=True)
    move_to_device([pageable], 'cuda')
    move_to_device([pinned, pageable], 'cpu', non_blocking=True)
    assert calls == [(True, 'cuda', True), (False, 'cuda', True), (False, 'cuda', False),
                     (True, 'cpu', False), (False, 'cpu', False)]


# ---------------------------------------------------------------------------- reduction


def test_scalar_tensors_are_averaged_weighted_by_slice_size_exactly():
    out = reduce_replica_outputs([torch.tensor(1.0), torch.tensor(4.0)], sizes=[3, 1])
    assert out.item() == 1.75  # (3 * 1 + 1 * 4) / 4, not the plain mean 2.5
    assert out.dim() == 0


def test_reduced_loss_has_the_gradient_of_one_device_on_the_whole_batch():
    torch.manual_seed(0)
    x, target = torch.randn(7, 3), torch.randn(7)
    weight = torch.randn(3, requires_grad=True)
    whole = ((x @ weight - target) ** 2).mean()
    whole.backward()

    # one leaf per replica, as replicate() makes one copy of the weights per device
    copies = [weight.detach().clone().requires_grad_() for _ in range(2)]
    slices = [slice(0, 4), slice(4, 7)]
    losses = [((x[s] @ w - target[s]) ** 2).mean() for s, w in zip(slices, copies)]
    reduced = reduce_replica_outputs(losses, sizes=[4, 3])
    reduced.backward()

    torch.testing.assert_close(reduced, whole.detach())
    torch.testing.assert_close(copies[0].grad + copies[1].grad, weight.grad)
    assert reduced.item() != pytest.approx((losses[0].item() + losses[1].item()) / 2)


def test_step_outputs_are_reduced_value_by_value():
    def step_output(loss, acc, preds, count, note):
        return loss, collections.OrderedDict([
            ('prog', {'acc': acc}), ('log', {'preds': preds, 'count': count}), ('note', note)])

    outputs = [step_output(torch.tensor(2.0), torch.tensor(0.5), torch.zeros(2, 3), 4, 'r0'),
               step_output(torch.tensor(6.0), torch.tensor(1.0), torch.ones(1, 3), 1, 'r1')]
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # e.g. torch's "all input tensors were scalars"
        loss, metrics = reduce_replica_outputs(outputs, sizes=[2, 1])

    assert loss.item() == pytest.approx((2 * 2.0 + 6.0) / 3)
    assert type(metrics) is collections.OrderedDict and list(metrics) == ['prog', 'log', 'note']
    assert metrics['prog']['acc'].item() == pytest.approx((2 * 0.5 + 1.0) / 3)
    assert torch.equal(metrics['log']['preds'], torch.cat([torch.zeros(2, 3), torch.ones(1, 3)]))
    assert metrics['log']['count'] == pytest.approx((2 * 4 + 1) / 3)
    assert metrics['note'] == 'r0'


def test_reduction_keeps_low_precision_dtypes_and_averages_integer_tensors():
    halves = [torch.tensor(1.0, dtype=torch.bfloat16), torch.tensor(2.0, dtype=torch.bfloat16)]
    out = reduce_replica_outputs(halves, sizes=[1, 2])
    assert out.dtype == torch.bfloat16 and out.item() == pytest.approx(5 / 3, rel=1e-2)
    counts = reduce_replica_outputs([torch.tensor(1), torch.tensor(2)], sizes=[1, 1])
    assert counts.dtype == torch.float32 and counts.item() == 1.5


def test_reduced_tensors_end_on_the_output_device():
    outputs = [{'loss': torch.tensor(1.0), 'x': torch.zeros(1, 2)},
               {'loss': torch.tensor(3.0), 'x': torch.ones(2, 2)}]
    out = reduce_replica_outputs(outputs, [1, 2], output_device=torch.device('meta'))
    assert out['loss'].device.type == 'meta' and out['x'].device.type == 'meta'
    assert out['x'].shape == (3, 2)


@pytest.mark.parametrize('outputs, where', [
    ([{'a': torch.tensor(1.0)}, {'b': torch.tensor(1.0)}], "keys ['a']"),
    ([(torch.tensor(1.0), {'acc': torch.tensor(1.0)}), (torch.tensor(1.0), {'acc': 0.5})],
     "the output[1]['acc']: replica 0 returned a 0-dim tensor, replica 1 a number"),
    ([[torch.tensor(1.0)], [torch.tensor(1.0), torch.tensor(2.0)]], 'lengths [1, 2]')])
def test_replicas_that_return_different_structures_are_an_error(outputs, where):
    with pytest.raises(ValueError, match='replica outputs differ') as error:
        reduce_replica_outputs(outputs, [1, 1])
    assert where in str(error.value)


# ---------------------------------------------------------------------- the runner, CPU


class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.inside = threading.local()

    def training_step(self, batch, batch_nb):
        self.seen = (batch, batch_nb, getattr(self.inside, 'flag', False))
        return {'loss': self.layer(batch).mean()}


def test_runner_with_one_device_calls_the_module_itself_inside_the_context():
    model = Recorder()
    events = []

    class Context:
        def __enter__(self):
            model.inside.flag = True
            events.append('enter')

        def __exit__(self, *exc):
            model.inside.flag = False
            events.append('exit')

    runner = DataParallelRunner(model, [0])
    batch = torch.randn(5, 3)
    out = runner.run('training_step', batch, 7, context=Context)
    assert runner.module is model and events == ['enter', 'exit']
    assert model.seen[0] is batch and model.seen[1:] == (7, True)
    torch.testing.assert_close(out['loss'], model.layer(batch).mean())
    assert runner.run('training_step', batch, 8)['loss'].shape == ()  # no context: none entered
    assert events == ['enter', 'exit']


def test_runner_needs_a_device():
    with pytest.raises(ValueError, match='at least one device'):
        DataParallelRunner(Recorder(), [])


def test_slice_size_is_the_first_dimension_of_the_first_tensor_with_one():
    assert _slice_size(torch.zeros(5, 2)) == 5
    assert _slice_size((torch.tensor(1.0), [{'x': torch.zeros(3)}])) == 3
    assert _slice_size(Pair('a', torch.zeros(2, 1))) == 2
    assert _slice_size(['text', 4]) is None


class Regressor(torch.nn.Module):
    """Records, per call, the thread, the slice size, grad mode and the context flag."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)
        self.inside = threading.local()
        self.calls = []

    def training_step(self, batch, batch_nb):
        x, y = batch
        if batch_nb == 'fail' and len(x) == 3:
            raise KeyError('the second replica failed')
        self.calls.append((threading.current_thread(), len(x), torch.is_grad_enabled(),
                           getattr(self.inside, 'flag', False)))
        out = self.layer(x).squeeze(1)
        return ((out - y) ** 2).mean(), {'preds': out, 'name': 'step'}


def flag_context(model):
    @contextlib.contextmanager
    def context():
        model.inside.flag = True
        yield
        model.inside.flag = False
    return context


def test_runner_runs_each_slice_in_its_own_thread_inside_the_context(two_fake_gpus):
    model = Regressor()
    x, y = torch.randn(7, 3), torch.randn(7)
    runner = DataParallelRunner(model, [0, 1])
    runner.output_device = torch.device('cpu')  # where the fake replicas' outputs live
    loss, metrics = runner.run('training_step', (x, y), 0, context=flag_context(model))

    assert two_fake_gpus == [([0, 1], False)]
    assert sorted(size for _, size, _, _ in model.calls) == [3, 4]
    assert all(grad and flag for _, _, grad, flag in model.calls)
    threads = {thread for thread, _, _, _ in model.calls}
    assert len(threads) == 2 and threading.current_thread() not in threads
    assert getattr(model.inside, 'flag', False) is False  # never entered in this thread

    whole = ((model.layer(x).squeeze(1) - y) ** 2).mean()
    expected = torch.autograd.grad(whole, model.layer.weight)[0]
    loss.backward()
    torch.testing.assert_close(loss, whole)
    torch.testing.assert_close(model.layer.weight.grad, expected)
    torch.testing.assert_close(metrics['preds'], model.layer(x).squeeze(1))
    assert metrics['name'] == 'step'


def test_runner_passes_grad_mode_to_the_replicas_and_detaches_them(two_fake_gpus):
    model = Regressor()
    runner = DataParallelRunner(model, [0, 1])
    runner.output_device = torch.device('cpu')
    with torch.no_grad():
        runner.run('training_step', (torch.randn(4, 3), torch.randn(4)), 0)
    assert two_fake_gpus == [([0, 1], True)]
    assert [grad for _, _, grad, _ in model.calls] == [False, False]


def test_runner_with_fewer_samples_than_devices_calls_the_module_itself(two_fake_gpus):
    model = Regressor()
    runner = DataParallelRunner(model, [0, 1])
    runner.run('training_step', (torch.randn(1, 3), torch.randn(1)), 0,
               context=flag_context(model))
    assert two_fake_gpus == []
    assert model.calls == [(threading.current_thread(), 1, True, True)]


def test_an_error_in_a_replica_is_raised_in_the_caller(two_fake_gpus):
    runner = DataParallelRunner(Regressor(), [0, 1])
    with pytest.raises(KeyError, match='the second replica failed'):
        runner.run('training_step', (torch.randn(7, 3), torch.randn(7)), 'fail')


def test_replicas_of_a_root_module_share_its_attributes():
    """``torch.nn.parallel.replicate`` builds each replica with this method (the GPU tests
    run the real thing): RootModule's ``__new__`` must not reset what the copy shares."""
    from models import TinyModel
    model = TinyModel(hparams={'lr': 0.1})
    model.trainer = trainer = object()
    replica = model._replicate_for_data_parallel()
    assert type(replica) is TinyModel and replica is not model
    assert replica.hparams == {'lr': 0.1} and replica.trainer is trainer
    assert replica.batch_size == model.batch_size


# ------------------------------------------------------------- the GPU parts, built here
# Building the device parts touches no GPU: what each one holds, and which GPU a DDP rank
# takes, can be checked on the CPU.


def test_make_device_gives_each_gpus_form_its_part():
    cpu = make_device(None, device_count=0)
    assert type(cpu) is CPUDevice and cpu.gpu_ids is None and not cpu.transfers_batches
    one = make_device('1,', device_count=2)
    assert type(one) is CUDADevice and one.root == torch.device('cuda', 1)
    assert one.gpu_ids == [1] and one.transfers_batches and not one.cheap_item
    several = make_device([1, 0], 'dp', device_count=2)
    assert type(several) is DataParallelDevice and several.root == torch.device('cuda', 1)
    assert several.gpu_ids == [1, 0] and several.transfers_batches and not several.cheap_item


def test_a_ddp_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    """Before join the DDP part acts as its first GPU; local rank r then takes gpus[r], made
    the current device before NCCL starts on it."""
    current = []
    monkeypatch.setattr(torch.cuda, 'set_device', current.append)
    device = make_device([2, 3], 'ddp', device_count=4)
    assert type(device) is DistributedDevice and device.processes_per_node == 2
    assert device.root == torch.device('cuda', 2) and device.gpu_ids == [2]
    assert device.transfers_batches and not device.cheap_item
    device.join(1)
    assert current == [torch.device('cuda', 3)]
    assert device.root == torch.device('cuda', 3) and device.gpu_ids == [3]
    assert not device.cheap_item  # a NaN on one rank is agreed at decision points


def test_cpu_ddp_ranks_check_losses_at_once_only_until_they_join():
    device = make_device(None, 'ddp')
    assert device.processes_per_node is None and device.root == torch.device('cpu')
    assert device.cheap_item and not device.transfers_batches
    device.join(1)
    assert device.root == torch.device('cpu') and not device.cheap_item


def test_a_gpu_device_hands_each_batch_to_the_module_hook_with_its_root():
    calls = []

    class Module:
        def transfer_batch_to_device(self, batch, device):
            calls.append((batch, device))
            return 'moved'

    batch = (torch.zeros(2), 'text')
    for device in (CUDADevice(1), DataParallelDevice([1, 0]), DistributedDevice([1])):
        assert device.to_device(Module(), batch) == 'moved'
    assert calls == [(batch, torch.device('cuda', 1))] * 3


def test_use_amp_on_a_gpu_is_float16_with_a_cuda_loss_scaler():
    with warnings.catch_warnings():  # this build has no CUDA: torch warns it disables both
        warnings.simplefilter('ignore')
        float16 = make_precision(True, None, None, 'cuda')
        assert float16.dtype == torch.float16 and float16.device_type == 'cuda'
        assert isinstance(float16.scaler, torch.amp.GradScaler)
        autocast = float16.autocast()
        assert autocast.device == 'cuda' and autocast.fast_dtype == torch.float16
    bfloat16 = make_precision(True, 'bfloat16', None, 'cuda')
    assert bfloat16.dtype == torch.bfloat16 and bfloat16.scaler is None
    assert make_precision(True, None, None, 'cpu').dtype == torch.bfloat16


def test_the_gpu_tests_count_each_sync_warning_once(monkeypatch):
    """tests/host_syncs.py counts torch's "called a synchronizing CUDA operation" warnings
    (sync-debug mode 'warn', switched off after); here the warnings are issued by hand."""
    from host_syncs import cuda_sync_warnings
    modes = []
    monkeypatch.setattr(torch.cuda, 'set_sync_debug_mode', modes.append)
    sync = 'called a synchronizing CUDA operation'
    with cuda_sync_warnings() as count:
        warnings.warn(sync)
        warnings.warn('something else')
        first = count()
        for _ in range(2):  # the same place twice: both counted (filter 'always')
            warnings.warn(sync)
        assert (first, count(), count()) == (1, 3, 3)
    assert modes == ['warn', 'default']

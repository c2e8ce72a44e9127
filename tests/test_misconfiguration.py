"""Every misuse is reported as a ``MisconfigurationException`` before the first training
batch, with a message that names the method or argument, what was received, and the fix.

One test per message. Models record their ``training_step`` calls in ``model.calls``; a
test asserting ``training_calls(model) == []`` proves nothing was trained before the error.
"""
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from models import TinyModel, make_loader
from pytorch_lightning import MisconfigurationException, NonFiniteLossError, RootModule, Trainer
from pytorch_lightning.callbacks import Callback


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope='module', autouse=True)
def warm_torch():
    """torch imports torch._dynamo (about 1.5 s) on the first optimizer it builds and on the
    first step; pay that once here so each test's own time stays well under a second."""
    layer = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 2)).sum().backward()
    optimizer.step()


def assert_message(excinfo, *parts):
    """Every one of ``parts`` (plain substrings, not regexes) is in the message."""
    message = str(excinfo.value)
    missing = [part for part in parts if part not in message]
    assert not missing, f'{missing} not in message:\n{message}'


def training_calls(model):
    return [c for c in model.calls if c[0] == 'training_step']


def _init(self):
    RootModule.__init__(self)
    self.layer = nn.Linear(32, 2)
    self.calls = []


def _training_step(self, data_batch, batch_nb):
    self.calls.append(('training_step', batch_nb))
    x, y = data_batch
    return F.cross_entropy(self.layer(x), y)


def _validation_step(self, data_batch, batch_nb):
    self.calls.append(('validation_step', batch_nb))
    x, y = data_batch
    return {'val_loss': F.cross_entropy(self.layer(x), y)}


def _test_step(self, data_batch, batch_nb):
    x, y = data_batch
    return {'test_loss': F.cross_entropy(self.layer(x), y)}


def _configure_optimizers(self):
    self.calls.append(('configure_optimizers',))
    return torch.optim.SGD(self.parameters(), lr=0.1)


PIECES = {
    '__init__': _init,
    'training_step': _training_step,
    'validation_step': _validation_step,
    'test_step': _test_step,
    'configure_optimizers': _configure_optimizers,
    'tng_dataloader': property(lambda self: make_loader(32, 8, seed=0)),   # 4 batches
    'val_dataloader': property(lambda self: make_loader(16, 8, seed=1)),   # 2 batches
    'test_dataloader': property(lambda self: make_loader(16, 8, seed=2)),
}


def build(name='ProbeModel', drop=(), **overrides):
    """An instance of a fresh RootModule subclass called ``name`` made of ``PIECES``
    without ``drop`` and with ``overrides``."""
    members = {key: value for key, value in PIECES.items() if key not in drop}
    members.update(overrides)
    return type(name, (RootModule,), members)()


def returning(make_output):
    """A training_step that records the call and returns ``make_output(self, loss)``."""
    def training_step(self, data_batch, batch_nb):
        self.calls.append(('training_step', batch_nb))
        x, y = data_batch
        return make_output(self, F.cross_entropy(self.layer(x), y))
    return training_step


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def unchanged(model, before):
    return all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# --------------------------------------------------------------------------- the module contract
def test_fit_with_a_non_module(quiet):
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit('not a model')
    assert_message(excinfo, 'fit(model)', 'got str', 'Subclass pytorch_lightning.RootModule')


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from torch._dynamo's import
def test_fit_with_a_compiled_model(quiet):
    """torch.compile(model) wraps the RootModule; its attributes are forwarded, so without
    this check fit failed later with a misleading "no training dataloader"."""
    model = build()
    compiled = torch.compile(model)  # wrapping only: nothing compiles before a call
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(compiled)
    assert_message(excinfo, 'torch.compile(ProbeModel)', 'self.net = torch.compile(self.net)')
    assert training_calls(model) == []


def test_no_training_step(quiet):
    model = build('NoStepModel', drop=('training_step',))
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'NoStepModel has no training_step',
                   'def training_step(self, data_batch, batch_nb)', 'return loss')
    assert model.calls == []  # not even configure_optimizers ran


def test_no_configure_optimizers(quiet):
    model = build('NoOptModel', drop=('configure_optimizers',))
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'NoOptModel has no configure_optimizers',
                   'return torch.optim.Adam(self.parameters()')
    assert training_calls(model) == []


def test_no_training_dataloader(quiet):
    model = build('NoLoaderModel', drop=('tng_dataloader',))
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'NoLoaderModel has no training dataloader', 'tng_dataloader',
                   'train_dataloader', 'returning a torch.utils.data.DataLoader')
    assert model.calls == []


def test_empty_training_dataloader(quiet):
    empty = DataLoader(TensorDataset(torch.randn(0, 32), torch.zeros(0).long()), batch_size=8)
    model = build(tng_dataloader=property(lambda self: empty))
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'tng_dataloader returned an empty loader', 'len 0', 'dataset size',
                   'batch_size', 'drop_last=True')
    assert training_calls(model) == []


@pytest.mark.parametrize('form', ['property', 'method'])
def test_training_dataloader_returning_none(quiet, form):
    def loader(self):
        return None
    model = build(train_dataloader=property(loader) if form == 'property' else loader,
                  drop=('tng_dataloader',))
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'train_dataloader returned None',
                   'Return a torch.utils.data.DataLoader')
    assert training_calls(model) == []


def test_training_dataloader_none_does_not_suggest_removing_it(quiet):
    model = build(tng_dataloader=property(lambda self: None))
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'tng_dataloader returned None', 'DataLoader')
    assert 'remove tng_dataloader' not in str(excinfo.value)


def test_dataloader_returning_a_non_iterable(quiet):
    model = build(tng_dataloader=property(lambda self: 5))
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'tng_dataloader returned int', 'not iterable',
                   'Return a torch.utils.data.DataLoader')
    assert training_calls(model) == []


def test_validation_step_without_val_dataloader(quiet):
    model = build('HalfValModel', drop=('val_dataloader',))
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'HalfValModel defines validation_step but no val_dataloader',
                   'Add a `val_dataloader` property', 'or remove validation_step')
    assert model.calls == []


def test_val_dataloader_without_validation_step(quiet):
    model = build('HalfValModel', drop=('validation_step',))
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'HalfValModel defines val_dataloader but no validation_step',
                   'def validation_step(self, data_batch, batch_nb)', 'or remove val_dataloader')
    assert model.calls == []


# --------------------------------------------------------------------------- configure_optimizers
def _opt(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize('make, parts', [
    (lambda m: None, ['configure_optimizers returned NoneType (None)']),
    (lambda m: 5, ['configure_optimizers returned int (5)']),
    (lambda m: 'adam', ["configure_optimizers returned str ('adam')"]),
], ids=['None', 'int', 'str'])
def test_configure_optimizers_returns_unsupported_type(quiet, make, parts):
    model = build(configure_optimizers=make)
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, *parts, 'Return one optimizer, a list/tuple of optimizers, a '
                   'pair ([optimizers], [lr_schedulers])')
    assert training_calls(model) == []


@pytest.mark.parametrize('make, received', [
    (lambda m: [], '([])'),
    (lambda m: ([], []), '([], [])'),
], ids=['empty-list', 'empty-pair'])
def test_configure_optimizers_returns_no_optimizer(quiet, make, received):
    model = build(configure_optimizers=make)
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'configure_optimizers returned no optimizer', received,
                   'Return one optimizer, a list/tuple of optimizers')
    assert training_calls(model) == []


@pytest.mark.parametrize('make, received', [
    (lambda m: [_opt(m), 5], 'got int'),
    (lambda m: ([_opt(m), m.layer], []), 'got Linear'),
], ids=['list', 'pair'])
def test_configure_optimizers_list_with_non_optimizer(quiet, make, received):
    model = build(configure_optimizers=make)
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'configure_optimizers: expected torch.optim.Optimizer objects',
                   received, 'Return one optimizer, a list/tuple of optimizers')
    assert training_calls(model) == []


@pytest.mark.parametrize('make, received', [
    (lambda m: ([_opt(m)], [5]), 'got int'),
    (lambda m: ([_opt(m)], [_opt(m)]), 'got SGD'),
], ids=['int', 'optimizer'])
def test_configure_optimizers_bad_scheduler_list(quiet, make, received):
    model = build(configure_optimizers=make)
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'configure_optimizers: the second list must hold LR schedulers',
                   'torch.optim.lr_scheduler', received)
    assert training_calls(model) == []


def test_several_optimizers_without_optimizer_i(quiet):
    model = build(configure_optimizers=lambda m: [_opt(m), _opt(m)])
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'configure_optimizers returned 2 optimizers',
                   'training_step cannot take a third argument',
                   'def training_step(self, data_batch, batch_nb, optimizer_i)')
    assert training_calls(model) == []


def test_choose_optimizer_unknown_name():
    model = TinyModel()
    with pytest.raises(MisconfigurationException) as excinfo:
        model.choose_optimizer('adamm', model.parameters(), {'lr': 0.1})
    assert_message(excinfo, 'choose_optimizer', "unknown optimizer name 'adamm'",
                   'Known names: adadelta, adam, adamw, rmsprop, sgd, sparse_adam')


# --------------------------------------------------------------------------- hooks
@pytest.mark.parametrize('hook, expected', [
    ('on_epoch_start', ['requires 2 positional argument(s) besides self',
                        'the trainer passes 0', '`def on_epoch_start(self)`']),
    ('on_batch_start', ['requires 2 positional argument(s) besides self',
                        'the trainer passes 1', '`def on_batch_start(self, batch)`',
                        'or `def on_batch_start(self)`']),
    ('on_before_zero_grad', ['requires 2 positional argument(s) besides self',
                             'the trainer passes 1',
                             '`def on_before_zero_grad(self, optimizer)`']),
])
def test_hook_with_wrong_number_of_arguments(quiet, hook, expected):
    def bad_hook(self, a, b):
        self.calls.append(('hook', a, b))
    model = build('HookModel', **{hook: bad_hook})
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, f'HookModel.{hook}', *expected)
    assert training_calls(model) == []


def test_hook_with_optional_argument_is_accepted(quiet):
    def on_epoch_start(self, verbose=False):
        self.calls.append(('on_epoch_start', verbose))
    model = build(on_epoch_start=on_epoch_start)
    Trainer(**quiet()).fit(model)
    assert ('on_epoch_start', False) in model.calls


def test_step_without_batch_argument(quiet):
    def training_step(self):
        self.calls.append(('training_step', None))
    model = build('NoArgStepModel', training_step=training_step)
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'NoArgStepModel.training_step takes no batch argument',
                   'def training_step(self, data_batch, batch_nb, optimizer_i)')
    assert training_calls(model) == []


# --------------------------------------------------------------------------- training_step output
# These are found by the first training_step call: it ran once, nothing was stepped.
def _fit_first_batch_fails(quiet, make_output):
    model = build(training_step=returning(make_output))
    before = snapshot(model)
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert training_calls(model) == [('training_step', 0)]
    assert unchanged(model, before), 'an optimizer step ran before the error'
    return excinfo


FORMS = ['return loss', "return loss, {'train_loss': loss}", "return {'loss': loss"]


def test_training_step_returns_unsupported_type(quiet):
    excinfo = _fit_first_batch_fails(quiet, lambda self, loss: 'a string')
    assert_message(excinfo, "training_step returned str ('a string')", *FORMS)


def test_training_step_returns_bad_tuple(quiet):
    excinfo = _fit_first_batch_fails(quiet, lambda self, loss: (loss, {}, 3))
    assert_message(excinfo, 'training_step returned a tuple of length 3 (Tensor, dict, int)',
                   'a tuple must be (loss, dict)', *FORMS)


def test_training_step_returns_tuple_without_dict(quiet):
    excinfo = _fit_first_batch_fails(quiet, lambda self, loss: (loss, loss))
    assert_message(excinfo, 'training_step returned a tuple of length 2 (Tensor, Tensor)',
                   'a tuple must be (loss, dict)', *FORMS)


def test_training_step_returns_dict_without_loss(quiet):
    excinfo = _fit_first_batch_fails(quiet, lambda self, loss: {'train_loss': loss})
    assert_message(excinfo, "training_step returned a dict without 'loss'",
                   "(keys: ['train_loss'])", *FORMS)


@pytest.mark.parametrize('key', ['prog', 'log'])
def test_training_step_dict_with_non_dict_metrics(quiet, key):
    excinfo = _fit_first_batch_fails(quiet, lambda self, loss: {'loss': loss, key: [loss]})
    assert_message(excinfo, f"training_step returned {{'{key}': list}}",
                   f"'{key}' must be a dict of metric name -> value")


def test_training_step_loss_not_a_scalar(quiet):
    def per_sample(self, loss):
        x, y = next(iter(self.tng_dataloader))
        return F.cross_entropy(self.layer(x), y, reduction='none')
    excinfo = _fit_first_batch_fails(quiet, per_sample)
    assert_message(excinfo, "training_step's loss has shape (8,)", 'it must be a scalar',
                   'loss = loss.mean()')


def _no_grad_loss(self):
    x, y = next(iter(self.tng_dataloader))
    with torch.no_grad():
        return F.cross_entropy(self.layer(x), y)


@pytest.mark.parametrize('make_output', [
    lambda self, loss: loss.detach(),
    lambda self, loss: _no_grad_loss(self),
], ids=['detach', 'no_grad'])
def test_training_step_loss_without_grad(quiet, make_output):
    excinfo = _fit_first_batch_fails(quiet, make_output)
    assert_message(excinfo, "training_step's loss does not require grad",
                   'without torch.no_grad() or .detach()', 'requires_grad=True')


@pytest.mark.parametrize('make_output', [
    lambda self, loss: 0.5,
    lambda self, loss: (0.5, {'train_loss': loss}),
    lambda self, loss: {'loss': 0.5},
], ids=['bare', 'tuple', 'dict'])
def test_training_step_loss_is_a_python_float(quiet, make_output):
    excinfo = _fit_first_batch_fails(quiet, make_output)
    assert_message(excinfo, "training_step's loss is float (0.5), not a tensor",
                   'Return the loss tensor', 'do not call .item()')


def test_training_step_output_for_second_optimizer_is_checked(quiet):
    def training_step(self, data_batch, batch_nb, optimizer_i):
        self.calls.append(('training_step', batch_nb, optimizer_i))
        x, y = data_batch
        loss = F.cross_entropy(self.layer(x), y)
        return (loss, {}, 3) if optimizer_i == 1 else loss
    model = build(training_step=training_step,
                  configure_optimizers=lambda m: [_opt(m), _opt(m)])
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'training_step returned a tuple of length 3 (Tensor, dict, int)',
                   'a tuple must be (loss, dict)', *FORMS)
    assert training_calls(model) == [('training_step', 0, 0), ('training_step', 0, 1)]


# --------------------------------------------------------------------------- evaluation
def test_validation_end_returns_non_dict(quiet):
    model = build(validation_end=lambda self, outputs: [o['val_loss'] for o in outputs])
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).fit(model)  # found by the sanity check
    assert_message(excinfo, 'validation_end returned list', 'return a dict of metric name',
                   "return {'val_loss': avg_loss}")
    assert training_calls(model) == []
    assert any(c[0] == 'validation_step' for c in model.calls)


def test_test_end_returns_non_dict(quiet):
    model = build(test_end=lambda self, outputs: 0.5)
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).test(model)
    assert_message(excinfo, 'test_end returned float', 'return a dict of metric name')


@pytest.mark.parametrize('drop, missing', [
    (('test_step',), 'lacks test_step.'),
    (('test_dataloader',), 'lacks test_dataloader.'),
    (('test_step', 'test_dataloader'), 'lacks test_step and test_dataloader.'),
])
def test_test_without_test_step_or_dataloader(quiet, drop, missing):
    model = build('NoTestModel', drop=drop)
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).test(model)
    assert_message(excinfo, 'test(): NoTestModel ' + missing,
                   'def test_step(self, data_batch, batch_nb)', 'a `test_dataloader` property')


def test_test_without_model_before_fit(quiet):
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet()).test()
    assert_message(excinfo, 'test() was called without a model and before fit()',
                   'trainer.test(model)')


# --------------------------------------------------------------------------- Trainer arguments
FRACTION = 'expected a float in (0.0, 1.0], the fraction of the data to use (1.0 = all of it)'
VCI_FIX = 'use a float in (0.0, 1.0] (a fraction of the training epoch'
TRAINER_ARGS = [
    ({'max_nb_epochs': 0}, ['Trainer(max_nb_epochs=0)', 'expected an int >= 1']),
    ({'max_nb_epochs': 2.5}, ['Trainer(max_nb_epochs=2.5)', 'expected an int >= 1']),
    ({'min_nb_epochs': 3, 'max_nb_epochs': 2},
     ['Trainer(min_nb_epochs=3, max_nb_epochs=2)', 'min_nb_epochs must not exceed max_nb_epochs']),
    ({'val_check_interval': 0}, ['Trainer(val_check_interval=0)', VCI_FIX, 'int >= 1']),
    ({'val_check_interval': 1.5}, ['Trainer(val_check_interval=1.5)', VCI_FIX, 'int >= 1']),
    ({'val_check_interval': 'x'}, ["Trainer(val_check_interval='x')", VCI_FIX, 'int >= 1']),
    ({'check_val_every_n_epoch': 0},
     ['Trainer(check_val_every_n_epoch=0)', 'expected an int >= 1']),
    ({'train_percent_check': 0}, ['Trainer(train_percent_check=0)', FRACTION]),
    ({'train_percent_check': 1.5}, ['Trainer(train_percent_check=1.5)', FRACTION]),
    ({'val_percent_check': 0}, ['Trainer(val_percent_check=0)', FRACTION]),
    ({'val_percent_check': 1.5}, ['Trainer(val_percent_check=1.5)', FRACTION]),
    ({'test_percent_check': 0}, ['Trainer(test_percent_check=0)', FRACTION]),
    ({'test_percent_check': 1.5}, ['Trainer(test_percent_check=1.5)', FRACTION]),
    ({'overfit_pct': 2}, ['Trainer(overfit_pct=2)', 'expected a float in [0.0, 1.0]']),
    ({'nb_sanity_val_steps': -1},
     ['Trainer(nb_sanity_val_steps=-1)', 'expected an int >= 0', 'Use 0 to skip the sanity check']),
    ({'accumulate_grad_batches': 0},
     ['Trainer(accumulate_grad_batches=0)', 'expected an int >= 1',
      'Or pass a dict {epoch: factor}']),
    ({'accumulate_grad_batches': {'a': 2}},
     ["Trainer(accumulate_grad_batches={'a': 2})", "got 'a': 2",
      'map epoch (int >= 0) -> batches to accumulate (int >= 1), e.g. {0: 1, 5: 4}']),
    ({'accumulate_grad_batches': {0: 0}},
     ['Trainer(accumulate_grad_batches={0: 0})', 'got 0: 0',
      'map epoch (int >= 0) -> batches to accumulate (int >= 1)']),
    ({'gradient_clip': -1},
     ['Trainer(gradient_clip=-1)', 'expected a number >= 0', '0 disables clipping']),
    ({'track_grad_norm': 0},
     ['Trainer(track_grad_norm=0)', "expected -1 (off) or the norm's order > 0", '2 for L2']),
    ({'progress_bar': 'yes'}, ["Trainer(progress_bar='yes')", 'expected True or False']),
    ({'fast_dev_run': 1}, ['Trainer(fast_dev_run=1)', 'expected True or False']),
    ({'process_position': -1}, ['Trainer(process_position=-1)', 'expected an int >= 0']),
    ({'log_save_interval': 0}, ['Trainer(log_save_interval=0)', 'expected an int >= 1']),
    ({'add_log_row_interval': 0}, ['Trainer(add_log_row_interval=0)', 'expected an int >= 1']),
    ({'experiment': 'foo'},
     ["Trainer(experiment='foo')", 'expected None', 'False (no logging)', 'test_tube.Experiment']),
    ({'default_save_path': 3},
     ['Trainer(default_save_path=3)', 'expected a folder path (str) or None']),
    ({'callbacks': 5}, ['Trainer(callbacks=5)', 'expected a list of Callback instances']),
]


@pytest.mark.parametrize('kwargs, parts', TRAINER_ARGS,
                         ids=['-'.join(f'{k}={v!r}' for k, v in case[0].items())
                              for case in TRAINER_ARGS])
def test_trainer_argument_out_of_range(quiet, kwargs, parts):
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet(**kwargs))
    assert_message(excinfo, *parts)


def test_gradient_clip_nan(quiet):
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet(gradient_clip=float('nan')))
    assert_message(excinfo, 'Trainer(gradient_clip=nan)', 'expected a number >= 0')


def test_val_check_interval_larger_than_epoch(quiet):
    model = build()  # 4 training batches
    trainer = Trainer(**quiet(val_check_interval=5))
    with pytest.raises(MisconfigurationException) as excinfo:
        trainer.fit(model)
    assert_message(excinfo, 'Trainer(val_check_interval=5)', 'larger than the 4 training batches',
                   'validation would never run', 'Use an int <= 4', 'float fraction such as 1.0')
    assert training_calls(model) == []


def test_callbacks_holding_a_non_callback(quiet):
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet(callbacks=[Callback(), object()]))  # caught at construction
    assert_message(excinfo, 'Trainer(callbacks=[..., object, ...])',
                   'must be a pytorch_lightning.callbacks.Callback instance', 'Subclass Callback')


# --------------------------------------------------------------------------- non-finite loss
@pytest.mark.parametrize('bad, word', [(float('nan'), 'NaN'), (float('inf'), 'infinite')])
def test_non_finite_loss_names_epoch_and_batch(quiet, bad, word):
    def make_output(self, loss):
        if self.trainer.current_epoch == 1 and self.calls[-1][1] == 1:
            return loss * bad
        return loss
    model = build(training_step=returning(make_output),
                  tng_dataloader=property(lambda self: make_loader(16, 8)))  # 2 batches
    with pytest.raises(NonFiniteLossError) as excinfo:
        Trainer(**quiet(max_nb_epochs=2, nb_sanity_val_steps=0)).fit(model)
    assert_message(excinfo, f'training_step returned a {word} loss at epoch 1, batch 1',
                   'Trainer(gradient_clip=...)', 'torch.autograd.detect_anomaly()', 'nothing was stepped')
    assert len(training_calls(model)) == 2 + 2  # a whole epoch, then batches 0 and 1
    assert all(torch.isfinite(p).all() for p in model.parameters()), 'backward ran on it'


def test_non_finite_loss_names_the_optimizer(quiet):
    def training_step(self, data_batch, batch_nb, optimizer_i):
        self.calls.append(('training_step', batch_nb, optimizer_i))
        x, y = data_batch
        loss = F.cross_entropy(self.layer(x), y)
        return loss * float('nan') if (batch_nb, optimizer_i) == (1, 1) else loss
    model = build(training_step=training_step,
                  configure_optimizers=lambda m: [_opt(m), _opt(m)])
    with pytest.raises(NonFiniteLossError) as excinfo:
        Trainer(**quiet()).fit(model)
    assert_message(excinfo, 'NaN loss at epoch 0, batch 1, optimizer 1')


@pytest.mark.parametrize('kwargs, parts', [
    (dict(checkpoint_callback='yes'), ["Trainer(checkpoint_callback='yes')", 'ModelCheckpoint(...) instance']),
    (dict(early_stop_callback=3), ['Trainer(early_stop_callback=3)', 'EarlyStopping(...) instance']),
    (dict(resume_from_checkpoint=5), ['Trainer(resume_from_checkpoint=5)', 'path of a .ckpt file']),
    (dict(resume_from_checkpoint='/nowhere/last.ckpt'),
     ["Trainer(resume_from_checkpoint='/nowhere/last.ckpt')", 'no such file', 'last.ckpt']),
])
def test_checkpoint_arguments(quiet, kwargs, parts):
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet(**kwargs))
    assert_message(excinfo, *parts)

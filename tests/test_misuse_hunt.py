"""New-user mistakes found by a hunt, each reported as a ``MisconfigurationException`` that
names the method or argument, what was received and the fix: before the first training batch
where the mistake can be seen then, else (a mistake that depends on the data) at the batch
that shows it, saying where. ``tests/test_misconfiguration.py`` holds the older cases; the
helpers come from there.
"""
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from models import make_loader
from pytorch_lightning import MisconfigurationException, RootModule, Trainer
from pytorch_lightning.callbacks import EarlyStopping
from test_misconfiguration import _init, _opt, assert_message, build, returning, training_calls


def _fails(quiet, model, **trainer_kwargs):
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet(**trainer_kwargs)).fit(model)
    return excinfo


# --------------------------------------------------------------------------- training_step, later
def _on_second_batch(make_output):
    """``make_output(self, loss)`` on batch 1 only; batch 0 returns a good loss, so the
    first-output check passes and the mistake shows on a later batch."""
    return returning(lambda self, loss: make_output(self, loss) if self.calls[-1][1] == 1
                     else loss)


@pytest.mark.parametrize('make_output, parts', [
    (lambda self, loss: loss.detach(), ["training_step's loss (epoch 0, batch 1) does not "
                                        "require grad", 'without torch.no_grad() or .detach()']),
    (lambda self, loss: loss.expand(8), ["training_step's loss (epoch 0, batch 1) has shape (8,)",
                                         'loss = loss.mean()']),
    (lambda self, loss: {'train_loss': loss}, ["training_step (epoch 0, batch 1) returned a dict "
                                               "without 'loss'", "return {'loss': loss"]),
    (lambda self, loss: (loss, {}, 3), ['training_step (epoch 0, batch 1) returned a tuple of '
                                        'length 3', 'a tuple must be (loss, dict)']),
    (lambda self, loss: (loss.item(), {}), ["training_step's loss (epoch 0, batch 1) is float",
                                            'do not call .item()']),
], ids=['detached', 'per-sample', 'dict-without-loss', 'tuple-of-3', 'item-in-tuple'])
def test_bad_training_output_on_a_later_batch_says_where_and_what_to_do(quiet, make_output,
                                                                        parts):
    """Before: a raw RuntimeError from backward, a KeyError 'loss', a ValueError from unpacking
    or an AttributeError from .item()."""
    model = build(training_step=_on_second_batch(make_output))
    excinfo = _fails(quiet, model, nb_sanity_val_steps=0)
    assert_message(excinfo, *parts)
    assert training_calls(model) == [('training_step', 0), ('training_step', 1)]


# --------------------------------------------------------------------------- monitored metrics
def _end_returning(value):
    return lambda self, outputs: {'val_loss': value}


@pytest.mark.parametrize('value, received', [
    (torch.tensor([0.5, 0.7]), 'a Tensor of shape (2,)'),
    ([0.5, 0.7], 'list ([0.5, 0.7])'),
    ('low', "str ('low')"),
], ids=['tensor', 'list', 'str'])
@pytest.mark.parametrize('sanity', [2, 0])
def test_monitored_metric_that_is_not_a_number(quiet, value, received, sanity):
    """Before: a TypeError/ValueError from float() after a whole training epoch. Now found by
    the sanity check, before the first batch (without one: at the first validation)."""
    model = build(validation_end=_end_returning(value))
    excinfo = _fails(quiet, model, nb_sanity_val_steps=sanity)
    assert_message(excinfo, "ModelCheckpoint(monitor='val_loss')",
                   f"validation_end returned 'val_loss' as {received}",
                   'a number or a one-element tensor', 'torch.stack(losses).mean()')
    assert len(training_calls(model)) == (0 if sanity else 4)


def test_missing_monitored_metric_is_found_by_the_sanity_check(quiet):
    """Before: found after the first training epoch."""
    model = build()
    excinfo = _fails(quiet, model, early_stop_callback=EarlyStopping(monitor='val_acc'))
    assert_message(excinfo, "EarlyStopping(monitor='val_acc'): validation_end returned no "
                   "'val_acc'", "available keys: ['val_loss']")
    assert training_calls(model) == []


def test_per_sample_val_loss_in_a_dict_is_refused_by_the_default_end(quiet):
    """Before: silently dropped, then a notice that validation_end returned no 'val_loss'."""
    def validation_step(self, data_batch, batch_nb):
        x, y = data_batch
        return {'val_loss': F.cross_entropy(self.layer(x), y, reduction='none')}
    model = build(validation_step=validation_step)
    excinfo = _fails(quiet, model)
    assert_message(excinfo, "validation_step returned 'val_loss' of shape (8,)",
                   'reduce it', 'override validation_end')
    assert training_calls(model) == []


# --------------------------------------------------------------------------- parameters
def _init_with(**layers):
    def __init__(self):
        RootModule.__init__(self)
        self.calls = []
        for name, value in layers.items():
            setattr(self, name, value())
    return __init__


def test_model_without_parameters(quiet):
    """Before: torch's ValueError 'optimizer got an empty parameter list'."""
    model = build('EmptyModel', __init__=_init_with())
    excinfo = _fails(quiet, model)
    assert_message(excinfo, 'EmptyModel has no parameters', 'self.layer = nn.Linear(')
    assert model.calls == []  # not even configure_optimizers ran


@pytest.mark.parametrize('container, holder, fix', [
    (lambda: [nn.Linear(32, 2)], 'list', 'nn.ModuleList'),
    (lambda: (nn.Linear(32, 2),), 'tuple', 'nn.ModuleList'),
    (lambda: {'head': nn.Linear(32, 2)}, 'dict', 'nn.ModuleDict'),
], ids=['list', 'tuple', 'dict'])
@pytest.mark.parametrize('with_registered_head', [False, True])
def test_layers_in_a_plain_container(quiet, container, holder, fix, with_registered_head):
    """Before: torch's empty-parameter-list ValueError, or (with another layer registered)
    silent training without the hidden layers, which checkpoints did not save either."""
    layers = {'blocks': container}
    if with_registered_head:
        layers['layer'] = lambda: nn.Linear(32, 2)
    model = build('ListModel', __init__=_init_with(**layers))
    excinfo = _fails(quiet, model)
    assert_message(excinfo, f'ListModel.blocks is a {holder} holding nn.Module', fix,
                   'not registered')
    assert model.calls == []


def test_a_plain_list_of_registered_layers_is_fine(quiet):
    def __init__(self):
        _init(self)
        self.shortcuts = [self.layer]  # references to a registered layer: nothing is lost
    model = build(__init__=__init__)
    Trainer(**quiet()).fit(model)
    assert len(training_calls(model)) == 4


# --------------------------------------------------------------------------- configure_optimizers
def test_same_optimizer_twice(quiet):
    """Before: silently two steps per batch with one optimizer."""
    def configure_optimizers(self):
        opt = _opt(self)
        return [opt, opt]
    model = build(configure_optimizers=configure_optimizers)
    excinfo = _fails(quiet, model)
    assert_message(excinfo, 'configure_optimizers returned the same SGD twice',
                   'optimizers 0 and 1', 'once')
    assert training_calls(model) == []


def test_scheduler_of_an_optimizer_not_returned(quiet):
    """Before: silently attached to optimizer 0 while it scheduled an untrained optimizer."""
    def configure_optimizers(self):
        other = _opt(self)
        return [_opt(self)], [torch.optim.lr_scheduler.StepLR(other, 1)]
    model = build(configure_optimizers=configure_optimizers)
    excinfo = _fails(quiet, model)
    assert_message(excinfo, 'configure_optimizers: LR scheduler 0 (StepLR)',
                   'optimizer that is not among the optimizers returned',
                   'StepLR(optimizer, ...)')
    assert training_calls(model) == []


def test_optimizer_over_parameters_of_another_module(quiet):
    """Before: silently trained nothing (the model's weights never changed)."""
    model = build('OtherModel', configure_optimizers=lambda self: torch.optim.SGD(
        nn.Linear(32, 2).parameters(), lr=0.1))
    excinfo = _fails(quiet, model)
    assert_message(excinfo, 'optimizer 0 (SGD) holds none of OtherModel',
                   'torch.optim.SGD(self.parameters()')
    assert training_calls(model) == []


@pytest.mark.parametrize('make', [
    lambda opt: (opt, torch.optim.lr_scheduler.StepLR(opt, 1)),
    lambda opt: ([opt], torch.optim.lr_scheduler.StepLR(opt, 1)),
], ids=['no-lists', 'scheduler-not-in-a-list'])
def test_optimizer_and_scheduler_not_as_two_lists(quiet, make):
    """Before: 'expected torch.optim.Optimizer objects, got StepLR' (or 'got list')."""
    model = build(configure_optimizers=lambda self: make(_opt(self)))
    excinfo = _fails(quiet, model)
    assert_message(excinfo, 'configure_optimizers returned an LR scheduler',
                   'return [optimizer], [scheduler]')
    assert training_calls(model) == []


def test_scheduler_class_instead_of_instance(quiet):
    model = build(configure_optimizers=lambda self: (
        [_opt(self)], [torch.optim.lr_scheduler.StepLR]))
    excinfo = _fails(quiet, model)
    assert_message(excinfo, 'got the class StepLR', 'StepLR(optimizer, ...)')


# --------------------------------------------------------------------------- dataloaders, model
def test_loader_assigned_in_init(quiet):
    """Before: 'has no training dataloader. Define tng_dataloader ...' though it was set."""
    def __init__(self):
        _init(self)
        self.tng_dataloader = make_loader(32, 8)
    model = build('AttrModel', drop=('tng_dataloader',), __init__=__init__)
    excinfo = _fails(quiet, model)
    assert_message(excinfo, 'AttrModel.tng_dataloader is set on the instance',
                   'define it in the class body', '@property')
    assert training_calls(model) == []


def test_loader_returning_the_dataloader_class(quiet):
    """Before: TypeError "'type' object is not iterable"."""
    model = build(tng_dataloader=property(lambda self: DataLoader))
    excinfo = _fails(quiet, model)
    assert_message(excinfo, 'tng_dataloader returned the class DataLoader',
                   'DataLoader(dataset, batch_size=')
    assert training_calls(model) == []


def test_fit_with_a_plain_nn_module(quiet):
    """Before: 'Linear has no training_step', without saying RootModule."""
    excinfo = _fails(quiet, nn.Linear(2, 2))
    assert_message(excinfo, 'fit(model): got Linear, a torch.nn.Module',
                   'Subclass pytorch_lightning.RootModule')


def test_fit_with_the_class_instead_of_an_instance(quiet):
    """Before: 'expected a RootModule (an nn.Module) instance, got type'."""
    cls = type(build('ClassModel'))
    excinfo = _fails(quiet, cls)
    assert_message(excinfo, 'fit(model): got the class ClassModel', 'fit(ClassModel(...))')


def test_callbacks_holding_a_class():
    """Before: 'Trainer(callbacks=[..., type, ...])'."""
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(experiment=False, callbacks=[EarlyStopping])
    assert_message(excinfo, 'Trainer(callbacks=[..., EarlyStopping, ...])',
                   'the class EarlyStopping', 'EarlyStopping(...)')


# --------------------------------------------------------------------------- found in a second pass
def test_training_step_calling_backward_itself(quiet):
    """Before: torch's 'Trying to backward through the graph a second time' RuntimeError."""
    def training_step(self, data_batch, batch_nb):
        self.calls.append(('training_step', batch_nb))
        x, y = data_batch
        loss = F.cross_entropy(self.layer(x), y)
        loss.backward()
        return loss
    model = build(training_step=training_step)
    excinfo = _fails(quiet, model)
    assert_message(excinfo, "training_step's loss (epoch 0, batch 0) was already backpropagated",
                   'loss.backward()', 'return the loss')
    assert 'second time' in str(excinfo.value.__cause__)
    assert training_calls(model) == [('training_step', 0)]


def test_validation_step_returning_a_tuple_without_dict(quiet):
    """Before: silently dropped by the default validation_end, then a notice that it returned
    no 'val_loss' (keys: [])."""
    def validation_step(self, data_batch, batch_nb):
        x, y = data_batch
        out = self.layer(x)
        return F.cross_entropy(out, y), (out.argmax(1) == y).float().mean()
    model = build(validation_step=validation_step)
    excinfo = _fails(quiet, model)
    assert_message(excinfo, 'validation_step returned a tuple of 2 items (Tensor, Tensor)',
                   "return loss, {'val_acc': acc}", 'override validation_end')
    assert training_calls(model) == []


def test_save_paths_with_a_tilde_are_expanded(quiet, tmp_path, monkeypatch):
    """Before: the checkpoints went into a folder literally called '~' under the working
    directory while test-tube's CSV went to the home folder, and the log save failed after
    training (a LoggerError at the end of fit)."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.chdir(tmp_path)
    checkpoint = ModelCheckpoint(filepath='~/ckpts')
    trainer = Trainer(**quiet(default_save_path='~/runs', experiment=None,
                              checkpoint_callback=checkpoint))
    trainer.fit(build())
    assert trainer.default_save_path == str(tmp_path / 'home' / 'runs')
    assert checkpoint.filepath == str(tmp_path / 'home' / 'ckpts')
    assert (tmp_path / 'home' / 'runs' / 'lightning_logs' / 'version_0' / 'metrics.csv').is_file()
    assert (tmp_path / 'home' / 'ckpts' / 'last.ckpt').is_file()
    assert not (tmp_path / '~').exists()


@pytest.mark.parametrize('argument', ['experiment', 'logger'])
def test_logger_class_instead_of_instance(quiet, argument):
    """Before: an AttributeError from test-tube (experiment=Experiment), or an error at the
    first log call (logger=TestTubeLogger)."""
    from test_tube import Experiment
    from pytorch_lightning.loggers import TestTubeLogger
    cls = {'experiment': Experiment, 'logger': TestTubeLogger}[argument]
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet(**{'experiment': None, argument: cls}))
    assert_message(excinfo, f'Trainer({argument}=...)', f'got the class {cls.__name__}',
                   f'`{cls.__name__}(...)`')


@pytest.mark.parametrize('patience', [-1, 2.5, None])
def test_early_stopping_patience(patience):
    """Before: accepted; -1 stopped at the first validation without improvement."""
    with pytest.raises(MisconfigurationException) as excinfo:
        EarlyStopping(patience=patience)
    assert_message(excinfo, f'EarlyStopping(patience={patience!r})', 'expected an int >= 0')


def test_early_stopping_without_validation(quiet):
    """Before: silently never stopped anything."""
    from models import TrainOnlyModel
    excinfo = _fails(quiet, TrainOnlyModel(), early_stop_callback=EarlyStopping())
    assert_message(excinfo, "EarlyStopping(monitor='val_loss') reads validation metrics",
                   'TrainOnlyModel has no validation', 'early_stop_callback=False')


def test_check_val_every_n_epoch_beyond_max_nb_epochs(quiet):
    """Before: validation silently never ran."""
    model = build()
    excinfo = _fails(quiet, model, check_val_every_n_epoch=5, max_nb_epochs=2)
    assert_message(excinfo, 'Trainer(check_val_every_n_epoch=5, max_nb_epochs=2)',
                   'validation would never run', 'check_val_every_n_epoch <= 2')
    assert training_calls(model) == []


def test_optimizer_over_a_plain_tensor(quiet):
    """Before: trained, but the tensor was not in state_dict(), so checkpoints lost it."""
    def __init__(self):
        _init(self)
        self.scale = torch.ones(2, requires_grad=True)  # not an nn.Parameter
    model = build('TensorModel', __init__=__init__, configure_optimizers=lambda self: (
        torch.optim.SGD(list(self.parameters()) + [self.scale], lr=0.1)))
    excinfo = _fails(quiet, model)
    assert_message(excinfo, 'optimizer 0 (SGD) holds 1 tensor(s) that are not parameters of '
                   'TensorModel (shapes [(2,)])', 'nn.Parameter')
    assert training_calls(model) == []


def test_resume_from_a_folder(quiet, tmp_path):
    """Before: 'no such file' for a folder that exists."""
    with pytest.raises(MisconfigurationException) as excinfo:
        Trainer(**quiet(resume_from_checkpoint=str(tmp_path)))
    assert_message(excinfo, f'Trainer(resume_from_checkpoint={str(tmp_path)!r}): a folder',
                   'last.ckpt')

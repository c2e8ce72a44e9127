"""Every up-front check of the user's module and the Trainer's arguments.

Each failure raises ``MisconfigurationException`` naming the method or argument, what was
received, and the fix. Nothing here runs per step except ``check_training_output`` (first
batch only) and ``unsupported_output`` (only when a step returns something unusable).
"""
import math
import numbers
import os

import torch
from torch import nn

from .data import LOADER_NAMES, find_loader_attr
from .exceptions import MisconfigurationException
from .module import RootModule

TRAINING_FORMS = ("  - a loss tensor: `return loss`\n"
                  "  - a (loss, dict) tuple: `return loss, {'train_loss': loss}` (dict: progress bar and log)\n"
                  "  - a dict: `return {'loss': loss, 'prog': {...}, 'log': {...}}` ('prog' and 'log' optional)")


def _fail(message):
    raise MisconfigurationException(message)


# --------------------------------------------------------------------------- trainer args
def _int(name, value, low, hint=''):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        _fail(f"Trainer({name}={value!r}): expected an int >= {low}.{hint}")


def _fraction(name, value, allow_zero=False):
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and (0.0 <= value <= 1.0 if allow_zero else 0.0 < value <= 1.0))
    if not ok:
        span = '[0.0, 1.0]' if allow_zero else '(0.0, 1.0]'
        _fail(f"Trainer({name}={value!r}): expected a float in {span}, the fraction of the "
              f"data to use (1.0 = all of it).")


def _flag(name, value):
    if not isinstance(value, bool):
        _fail(f"Trainer({name}={value!r}): expected True or False.")


def _fail_if_class(what, value):
    """A class passed where an instance is expected (``callbacks=[EarlyStopping]``)."""
    if isinstance(value, type):
        _fail(f"{what}: got the class {value.__name__}, not an instance. Pass an instance: "
              f"`{value.__name__}(...)`.")


def _check_world_args(args):
    """``nb_gpu_nodes``, ``num_processes``, ``process_group_timeout``, ``find_unused_parameters``
    and how they combine with ``distributed_backend`` and ``gpus``."""
    backend = args.get('distributed_backend')
    ddp = backend in ('ddp', 'ddp_spawn')
    _int('nb_gpu_nodes', args.get('nb_gpu_nodes', 1), 1)
    _int('num_processes', args.get('num_processes', 1), 1)
    timeout = args.get('process_group_timeout', 600)
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
        _fail(f"Trainer(process_group_timeout={timeout!r}): expected the seconds a collective "
              f"may wait for the other processes (a number > 0, e.g. 600).")
    unused = args.get('find_unused_parameters')
    if unused is not None and not isinstance(unused, bool):
        _fail(f"Trainer(find_unused_parameters={unused!r}): expected None (automatic: True "
              f"with several optimizers), True or False.")
    for name in ('nb_gpu_nodes', 'num_processes'):
        if args.get(name, 1) > 1 and not ddp:
            _fail(f"Trainer({name}={args[name]}) starts several processes, which needs "
                  f"distributed_backend='ddp' (got {backend!r}). Pass distributed_backend='ddp'.")
    gpus = args.get('gpus')
    if args.get('num_processes', 1) > 1 and gpus not in (None, 0, '0', '', []):
        _fail(f"Trainer(num_processes={args['num_processes']}, gpus={gpus!r}): with GPUs DDP "
              f"starts one process per GPU, so num_processes is for CPU training only. Drop "
              f"num_processes (gpus sets the processes per node).")


def check_trainer_args(args):
    """Validate the Trainer's constructor arguments (a dict of name -> value)."""
    exp = args['experiment']
    for name in ('experiment', 'logger', 'checkpoint_callback', 'early_stop_callback'):
        _fail_if_class(f'Trainer({name}=...)', args.get(name))
    if not (exp is None or exp is False or (hasattr(exp, 'log') and hasattr(exp, 'save'))):
        _fail(f"Trainer(experiment={exp!r}): expected None (a test-tube Experiment under "
              f"default_save_path/lightning_logs), False (no logging), or a "
              f"test_tube.Experiment.")
    logger = args.get('logger')
    if isinstance(logger, bool):
        _fail(f"Trainer(logger={logger}): logger= takes a logger object "
              f"(a pytorch_lightning.loggers.LightningLoggerBase). To turn logging off pass "
              f"experiment=False; for the default test-tube logs pass nothing.")
    steps = args.get('truncated_bptt_steps')
    if steps is not None:
        _int('truncated_bptt_steps', steps, 1, ' Or None for whole batches.')
    if logger is not None:
        if exp is not None:
            _fail(f"Trainer(logger={logger!r}, experiment={exp!r}): pass one of them. logger= "
                  f"takes any LightningLoggerBase; experiment= a test_tube.Experiment or False.")
        missing = [m for m in ('log_hyperparams', 'log_metrics', 'save', 'finalize')
                   if not callable(getattr(logger, m, None))]
        if missing:
            _fail(f"Trainer(logger={logger!r}): a logger needs the methods {missing}. Subclass "
                  f"pytorch_lightning.loggers.LightningLoggerBase.")
    path = args['default_save_path']
    if path is not None and not isinstance(path, (str, os.PathLike)):
        _fail(f"Trainer(default_save_path={path!r}): expected a folder path (str) or None "
              f"for the current directory.")
    _check_world_args(args)
    _int('max_nb_epochs', args['max_nb_epochs'], 1)
    _int('min_nb_epochs', args['min_nb_epochs'], 0)
    if args['min_nb_epochs'] > args['max_nb_epochs']:
        _fail(f"Trainer(min_nb_epochs={args['min_nb_epochs']}, max_nb_epochs="
              f"{args['max_nb_epochs']}): min_nb_epochs must not exceed max_nb_epochs.")
    vci = args['val_check_interval']
    if isinstance(vci, bool) or not isinstance(vci, numbers.Real) or (
            isinstance(vci, numbers.Integral) and vci < 1) or (
            not isinstance(vci, numbers.Integral) and not 0.0 < vci <= 1.0):
        _fail(f"Trainer(val_check_interval={vci!r}): use a float in (0.0, 1.0] (a fraction of "
              f"the training epoch, e.g. 0.25 validates every quarter of an epoch) or an int >= 1 "
              f"(validate every N training batches).")
    _int('check_val_every_n_epoch', args['check_val_every_n_epoch'], 1)
    for name in ('train_percent_check', 'val_percent_check', 'test_percent_check'):
        _fraction(name, args[name])
    _fraction('overfit_pct', args['overfit_pct'], allow_zero=True)
    _int('nb_sanity_val_steps', args['nb_sanity_val_steps'], 0,
         ' Use 0 to skip the sanity check.')
    acc = args['accumulate_grad_batches']
    if isinstance(acc, dict):
        for epoch, factor in acc.items():
            if (isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0
                    or isinstance(factor, bool) or not isinstance(factor, numbers.Integral)
                    or factor < 1):
                _fail(f"Trainer(accumulate_grad_batches={acc!r}): a dict must map epoch "
                      f"(int >= 0) -> batches to accumulate (int >= 1), e.g. {{0: 1, 5: 4}}; "
                      f"got {epoch!r}: {factor!r}.")
    else:
        _int('accumulate_grad_batches', acc, 1, ' Or pass a dict {epoch: factor}.')
    clip = args['gradient_clip']
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not 0 <= clip < math.inf:
        _fail(f"Trainer(gradient_clip={clip!r}): expected a number >= 0, the largest total "
              f"gradient norm (0 disables clipping).")
    norm = args['track_grad_norm']
    if isinstance(norm, bool) or not isinstance(norm, numbers.Real) or not (norm == -1 or norm > 0):
        _fail(f"Trainer(track_grad_norm={norm!r}): expected -1 (off) or the norm's order > 0 "
              f"(e.g. 2 for L2).")
    for name in ('fast_dev_run', 'print_nan_grads', 'progress_bar', 'print_weights_summary',
                 'use_amp'):
        _flag(name, args[name])
    _int('process_position', args['process_position'], 0)
    _int('log_save_interval', args['log_save_interval'], 1)
    _int('add_log_row_interval', args['add_log_row_interval'], 1)
    cbs = args['callbacks']
    if cbs is not None and not isinstance(cbs, (list, tuple)):
        _fail(f"Trainer(callbacks={cbs!r}): expected a list of Callback instances.")
    from .callbacks.base import Callback
    from .callbacks.early_stopping import EarlyStopping
    from .callbacks.model_checkpoint import ModelCheckpoint
    for name, cls in (('checkpoint_callback', ModelCheckpoint), ('early_stop_callback', EarlyStopping)):
        value = args[name]
        if not (value is None or value is False or isinstance(value, cls)):
            _fail(f"Trainer({name}={value!r}): expected None (the default {cls.__name__}), "
                  f"False (none) or a {cls.__name__}(...) instance.")
    resume = args['resume_from_checkpoint']
    if resume is not None and not isinstance(resume, (str, os.PathLike)):
        _fail(f"Trainer(resume_from_checkpoint={resume!r}): expected the path of a .ckpt file.")
    if resume is not None and os.path.isdir(resume):
        _fail(f"Trainer(resume_from_checkpoint={os.fspath(resume)!r}): a folder, not a "
              f"checkpoint file. Pass the file, e.g. "
              f"{os.path.join(os.fspath(resume), 'last.ckpt')!r}.")
    if resume is not None and not os.path.isfile(resume):
        _fail(f"Trainer(resume_from_checkpoint={os.fspath(resume)!r}): no such file. Pass the "
              f"path of a checkpoint, e.g. <experiment folder>/checkpoints/last.ckpt.")
    for cb in cbs or ():
        if isinstance(cb, type):
            _fail_if_class(f"Trainer(callbacks=[..., {cb.__name__}, ...])", cb)
        if not isinstance(cb, Callback):
            _fail(f"Trainer(callbacks=[..., {type(cb).__name__}, ...]): every item must be a "
                  f"pytorch_lightning.callbacks.Callback instance. Subclass Callback and "
                  f"override the hooks you need.")


def check_writable_folder(path, what):
    """Fail when the folder ``path`` cannot be written into: its nearest existing ancestor
    (itself, when it exists) must be a folder this process may write into. ``what`` names
    the argument that chose the folder, e.g. ``"Trainer(default_save_path='runs')"``."""
    path = os.path.abspath(os.fspath(path))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        _fail(f"{what}: cannot create the folder {path!r}, because {existing!r} is a file, "
              f"not a folder. Pass a folder path whose existing parts are folders.")
    if not os.access(existing, os.W_OK | os.X_OK):
        _fail(f"{what}: cannot write into {path!r}, because {existing!r} is not writable by "
              f"this user (permissions). Pass a folder you can write to, or fix the "
              f"permissions (e.g. `chmod u+wx {existing}`).")


# --------------------------------------------------------------------------- the module
def _defines(module, name):
    return callable(getattr(module, name, None))


def check_module(module):
    """Check the contract before anything runs: the methods ``fit`` needs are there and the
    validation pieces come in pairs."""
    if isinstance(module, type):
        _fail(f"fit(model): got the class {module.__name__}, not a model. Pass an instance: "
              f"`fit({module.__name__}(...))`.")
    if not isinstance(module, nn.Module):
        _fail(f"fit(model): expected a RootModule (an nn.Module) instance, got "
              f"{type(module).__name__}. Subclass pytorch_lightning.RootModule.")
    inner = getattr(module, '_orig_mod', None)  # what torch.compile(model) wraps
    if isinstance(inner, nn.Module) and inner is not module:
        _fail(f"fit(model): got torch.compile({type(inner).__name__}) (a "
              f"{type(module).__name__}). The Trainer needs your RootModule itself: its "
              f"hooks, dataloaders and checkpoint keys. Pass the model uncompiled and compile "
              f"the parts that do the work inside it, e.g. `self.net = "
              f"torch.compile(self.net)` in __init__.")
    name = type(module).__name__
    if not isinstance(module, RootModule) and not _defines(module, 'training_step'):
        _fail(f"fit(model): got {name}, a torch.nn.Module that is not a RootModule and has "
              f"no training_step. Subclass pytorch_lightning.RootModule and define "
              f"training_step, configure_optimizers and a training dataloader (wrap your "
              f"network: `self.net = {name}(...)`).")
    if not _defines(module, 'training_step'):
        _fail(f"{name} has no training_step. Define `def training_step(self, data_batch, "
              f"batch_nb)` returning one of:\n{TRAINING_FORMS}")
    if not _defines(module, 'configure_optimizers'):
        _fail(f"{name} has no configure_optimizers. Define it and return an optimizer, e.g. "
              f"`return torch.optim.Adam(self.parameters(), lr=1e-3)`.")
    if find_loader_attr(module, 'train') is None:
        _fail_if_loader_on_instance(module, 'train')
        _fail(f"{name} has no training dataloader. Define `tng_dataloader` (or "
              f"`train_dataloader`) as a property or method returning a "
              f"torch.utils.data.DataLoader.")
    check_parameters(module)
    has_step = _defines(module, 'validation_step')
    has_loader = find_loader_attr(module, 'val') is not None
    if has_step and not has_loader:
        _fail_if_loader_on_instance(module, 'val')
        _fail(f"{name} defines validation_step but no val_dataloader. Add a `val_dataloader` "
              f"property returning a DataLoader, or remove validation_step.")
    if has_loader and not has_step:
        _fail(f"{name} defines val_dataloader but no validation_step. Add `def "
              f"validation_step(self, data_batch, batch_nb)`, or remove val_dataloader.")


def check_parameters(module):
    """The module has parameters, and no layer hides in a plain list, tuple or dict (an
    attribute of the module): ``nn.Module`` registers only layers assigned directly or held
    in ``nn.ModuleList``/``nn.ModuleDict``, so the optimizer, ``.to(device)``, ``state_dict()``
    and checkpoints would not see the hidden one's parameters."""
    name = type(module).__name__
    registered = {id(p) for p in module.parameters()}
    for attr, value in vars(module).items():
        if attr.startswith('_') or not isinstance(value, (list, tuple, dict)):
            continue
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if isinstance(item, nn.Module) and any(id(p) not in registered
                                                   for p in item.parameters()):
                fix = 'nn.ModuleDict' if isinstance(value, dict) else 'nn.ModuleList'
                _fail(f"{name}.{attr} is a {type(value).__name__} holding nn.Module objects "
                      f"({type(item).__name__}), whose parameters are not registered: the "
                      f"optimizer, .to(device), state_dict() and checkpoints do not see them. "
                      f"Hold them in a {fix}: `self.{attr} = {fix}(...)`.")
    if not registered:
        _fail(f"{name} has no parameters, so there is nothing to train. Assign the layers in "
              f"__init__, e.g. `self.layer = nn.Linear(32, 2)` (a plain tensor is not a "
              f"parameter: wrap it in nn.Parameter).")


def check_optimizer_parameters(optimizers, module):
    """Each optimizer holds only parameters of the module (anything else is not saved in
    checkpoints nor moved to the device), and at least one."""
    own = {id(p) for p in module.parameters()}
    name = type(module).__name__
    for i, opt in enumerate(optimizers):
        params = [p for group in opt.param_groups for p in group['params']]
        foreign = [p for p in params if id(p) not in own]
        if foreign and len(foreign) < len(params):
            _fail(f"configure_optimizers: optimizer {i} ({type(opt).__name__}) holds "
                  f"{len(foreign)} tensor(s) that are not parameters of {name} (shapes "
                  f"{[tuple(p.shape) for p in foreign][:5]}): state_dict(), checkpoints and "
                  f".to(device) leave them out. Register them in __init__: `self.scale = "
                  f"nn.Parameter(torch.ones(...))`, or an attribute that is an nn.Module.")
        if foreign:
            _fail(f"configure_optimizers: optimizer {i} ({type(opt).__name__}) holds none of "
                  f"{name}'s parameters, so training would change nothing in {name}. Build it "
                  f"over the model's own parameters, e.g. "
                  f"`torch.optim.{type(opt).__name__}(self.parameters(), lr=...)`.")


def _fail_if_loader_on_instance(module, stage):
    """A loader for ``stage`` assigned on the instance (``self.tng_dataloader = ...`` in
    ``__init__``) is not found on the class, where the trainer looks."""
    for attr in LOADER_NAMES[stage]:
        if attr in vars(module):
            _fail(f"{type(module).__name__}.{attr} is set on the instance (in __init__?), but "
                  f"the trainer reads dataloaders from the class: define it in the class body, "
                  f"as a `@property` (or a method) returning the DataLoader.")


def check_test_contract(module):
    name = type(module).__name__
    has_step, has_loader = _defines(module, 'test_step'), find_loader_attr(module, 'test') is not None
    if not has_step or not has_loader:
        missing = ' and '.join(n for n, ok in (('test_step', has_step),
                                               ('test_dataloader', has_loader)) if not ok)
        _fail(f"test(): {name} lacks {missing}. Define `def test_step(self, data_batch, "
              f"batch_nb)` and a `test_dataloader` property returning a DataLoader.")


def unsupported_output(out, where=''):
    _fail(f"training_step{where} returned {type(out).__name__} ({out!r:.80}). Return one of:\n"
          f"{TRAINING_FORMS}")


def check_training_output(out, where=''):
    """Full check of a training step's return value: the first batch's (per optimizer), and
    a later batch's when using it failed (``where`` then says which batch, e.g. ``' (epoch 0,
    batch 3)'``)."""
    step = f'training_step{where}'
    if isinstance(out, (tuple, list)):
        if len(out) != 2 or not isinstance(out[1], dict):
            _fail(f"{step} returned a {type(out).__name__} of length {len(out)} "
                  f"({', '.join(type(o).__name__ for o in out)}); a tuple must be "
                  f"(loss, dict). Return one of:\n{TRAINING_FORMS}")
        loss = out[0]
    elif isinstance(out, dict):
        if 'loss' not in out:
            _fail(f"{step} returned a dict without 'loss' (keys: {sorted(out)}). "
                  f"Return one of:\n{TRAINING_FORMS}")
        for key in ('prog', 'progress_bar', 'log'):
            if key in out and not isinstance(out[key], dict):
                _fail(f"{step} returned {{'{key}': {type(out[key]).__name__}}}; "
                      f"'{key}' must be a dict of metric name -> value.")
        loss = out['loss']
    elif isinstance(out, (torch.Tensor, numbers.Number)):
        loss = out
    else:
        unsupported_output(out, where)
    check_loss(loss, where)


def check_loss(loss, where=''):
    """The loss a training step returned is a scalar tensor that requires grad."""
    name = f"training_step's loss{where}"
    if not isinstance(loss, torch.Tensor):
        _fail(f"{name} is {type(loss).__name__} ({loss!r:.40}), not a tensor. "
              f"Return the loss tensor your model computed (do not call .item() on it).")
    if loss.numel() != 1:
        _fail(f"{name} has shape {tuple(loss.shape)}; it must be a scalar. "
              f"Reduce it, e.g. `loss = loss.mean()`.")
    if not loss.requires_grad:
        _fail(f"{name} does not require grad, so backward() cannot train "
              "anything. Compute it from the model's outputs without torch.no_grad() or "
              ".detach(), and check that some parameters have requires_grad=True (freeze()?).")


def check_backward_error(err, where=''):
    """``err`` is torch's error for a second backward through a freed graph: the training
    step already ran backward on its loss (a habit from hand-written loops)."""
    if isinstance(err, RuntimeError) and 'backward through the graph a second time' in str(err):
        _fail(f"training_step's loss{where} was already backpropagated: does training_step "
              f"call loss.backward() (or optimizer.step())? The trainer runs backward and the "
              f"optimizer step itself: remove those calls and return the loss (to change them, "
              f"override backward or optimizer_step).")


def check_eval_end_output(name, metrics):
    if not isinstance(metrics, dict):
        _fail(f"{name} returned {type(metrics).__name__}; return a dict of metric name -> "
              f"value, e.g. `return {{'val_loss': avg_loss}}`.")


def check_monitored_metrics(callbacks, metrics):
    """The sanity check's ``metrics`` hold what each ``ModelCheckpoint`` and ``EarlyStopping``
    among ``callbacks`` monitors, as a number (see ``Monitor.check``): a wrong key or value
    is reported before the first training batch instead of after the first epoch."""
    from .callbacks.early_stopping import EarlyStopping
    from .callbacks.model_checkpoint import ModelCheckpoint
    for cb in callbacks:
        if isinstance(cb, (ModelCheckpoint, EarlyStopping)):
            cb.monitor.check(metrics)


def check_early_stopping_has_validation(callbacks, module):
    """An ``EarlyStopping`` the user configured on a model without validation would never
    stop anything (the trainer's default one is off there, quietly)."""
    from .callbacks.early_stopping import EarlyStopping
    for cb in callbacks:
        if isinstance(cb, EarlyStopping) and cb.monitor.required:
            name = type(module).__name__
            _fail(f"EarlyStopping(monitor={cb.monitor.key!r}) reads validation metrics, but "
                  f"{name} has no validation (validation_step and val_dataloader), so it would "
                  f"never stop training. Add validation, or remove it "
                  f"(Trainer(early_stop_callback=False) for the default one).")


def accumulates(accumulate_grad_batches):
    """Whether the ``accumulate_grad_batches`` schedule accumulates in some epoch: an int
    above 1, or a dict with a factor above 1 (epochs before its first key use 1, so
    ``{0: 1}`` or ``{3: 1}`` never accumulate)."""
    if isinstance(accumulate_grad_batches, dict):
        return any(factor != 1 for factor in accumulate_grad_batches.values())
    return accumulate_grad_batches != 1


def check_closure_optimizers(optimizers, accumulate_grad_batches, precision, hooks, module):
    """LBFGS (an optimizer whose step re-evaluates the loss several times) needs the closure
    on every step: no accumulation, no float16 scaler, and an ``optimizer_step`` override must
    take ``second_order_closure``."""
    for i, opt in enumerate(optimizers):
        if not isinstance(opt, torch.optim.LBFGS):
            continue
        name = f"configure_optimizers returned LBFGS (optimizer {i})"
        if accumulates(accumulate_grad_batches):
            _fail(f"{name} with Trainer(accumulate_grad_batches={accumulate_grad_batches!r}): "
                  f"LBFGS re-evaluates the loss inside its step, which cannot span several "
                  f"batches. Use accumulate_grad_batches=1 or another optimizer.")
        if precision.scaler is not None:
            _fail(f"{name} with float16 mixed precision: a GradScaler cannot step an optimizer "
                  f"that calls its closure. Use Trainer(use_amp=True, amp_dtype='bfloat16') "
                  f"or full precision.")
        if hooks.module_optimizer_step is not None and not hooks.optimizer_step_takes_closure:
            _fail(f"{name}, and {type(module).__name__}.optimizer_step calls optimizer.step() "
                  f"without the closure LBFGS needs. Add a `second_order_closure=None` "
                  f"argument and call optimizer.step(second_order_closure).")


def check_optimizer_frequencies(frequencies, accumulate_grad_batches):
    """Optimizers that take turns by batch cannot accumulate over several batches."""
    if frequencies is not None and accumulates(accumulate_grad_batches):
        _fail(f"configure_optimizers gave optimizer frequencies {frequencies} (optimizers take "
              f"turns by training batch) and Trainer(accumulate_grad_batches="
              f"{accumulate_grad_batches!r}) accumulates over batches; the two cannot be "
              f"combined. Use accumulate_grad_batches=1, or drop 'frequency'.")


def check_tbptt(steps, accumulate_grad_batches, module, nb_optimizers, data_parallel=False):
    """``truncated_bptt_steps``: a positive int, no accumulation, not under DataParallel
    (``data_parallel``), and a ``training_step`` that takes ``hiddens``."""
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        _fail(f"Trainer(truncated_bptt_steps={steps!r}): expected None or an int >= 1 (time "
              f"steps per split).")
    if data_parallel:  # the replicas get batch slices but hiddens whole (batch dim unknown)
        _fail(f"Trainer(truncated_bptt_steps={steps}) cannot run under DataParallel (several "
              f"GPUs in one process): each replica gets a slice of the batch but the whole "
              f"hiddens. Use distributed_backend='ddp', or one GPU.")
    if accumulates(accumulate_grad_batches):
        _fail(f"Trainer(truncated_bptt_steps={steps}, accumulate_grad_batches="
              f"{accumulate_grad_batches!r}): each split is one optimizer step, so gradients "
              f"cannot also be accumulated over batches. Use accumulate_grad_batches=1.")
    from .utilities import accepts
    wanted = 4 if nb_optimizers > 1 else 3
    if not accepts(module.training_step, wanted):
        middle = 'batch_nb, optimizer_i, ' if nb_optimizers > 1 else 'batch_nb, '
        _fail(f"Trainer(truncated_bptt_steps={steps}) passes the hidden state to training_step, "
              f"but {type(module).__name__}.training_step cannot take it. Define `def "
              f"training_step(self, data_batch, {middle}hiddens)` and return "
              f"{{'loss': ..., 'hiddens': ...}}.")

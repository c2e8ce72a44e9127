"""Checkpoints that load with ``torch.load(path, weights_only=True)``, hyperparameters that keep
their types through ``load_from_checkpoint`` / ``load_from_metrics``, and the error for a
checkpoint loaded into the wrong class."""
import argparse
import collections
import json
import pathlib
import random

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_lightning import RootModule, Trainer, checkpoint_io
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.exceptions import CheckpointError
from pytorch_lightning.hparams import (HPARAMS_FILE, hparams_from_typed, load_hparams_file,
                                       save_hparams_file, typed_hparams)

from models import TinyModel, make_loader


# ------------------------------------------------------------------ bug 5: weights_only loads
class NumpyWorld(TinyModel):
    """Uses numpy and python randomness in its steps, an LR scheduler, and returns numpy
    scalars from validation_end: everything a checkpoint must store as plain types."""

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        x = x + float(np.random.randn()) * 0.01 + random.random() * 0.01
        loss = nn.functional.cross_entropy(self(x), y)
        return loss, {'train_loss': loss}

    def validation_end(self, outputs):
        metrics = super().validation_end(outputs)
        return {'val_loss': np.float32(metrics['val_loss']),
                'val_acc': np.float64(metrics['val_acc']), 'seen': np.int64(len(outputs))}

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.05)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]

    @property
    def tng_dataloader(self):
        return make_loader(self.n, self.batch_size, shuffle=True)


def numpy_world(tmp_path):
    hparams = argparse.Namespace(data=pathlib.Path(tmp_path) / 'data', width=np.int64(8),
                                 drop=np.float32(0.25), flag=np.bool_(True), name='w')
    return NumpyWorld(hparams)


class SaveThenCrash(Callback):
    """Writes ``path`` with ``trainer.save_checkpoint`` at one save point, then interrupts the
    fit at the start of a later batch."""

    def __init__(self, path, save_at, crash_at):
        self.path, self.save_at, self.crash_at = path, save_at, crash_at

    def on_save_point(self, trainer, module):
        if trainer.state.total_batches == self.save_at:
            trainer.save_checkpoint(self.path, background=False)

    def on_batch_start(self, trainer, module, batch):
        if trainer.state.total_batches == self.crash_at:
            raise KeyboardInterrupt


def default_trainer(save_dir, **overrides):
    """Default logging (a test-tube experiment), default checkpoint and early stopping."""
    kwargs = dict(default_save_path=str(save_dir), progress_bar=False,
                  print_weights_summary=False, max_nb_epochs=2, val_check_interval=0.5)
    kwargs.update(overrides)
    return Trainer(**kwargs)


def test_default_checkpoints_load_with_weights_only_and_resume_exactly(tmp_path):
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    full = numpy_world(tmp_path)
    default_trainer(tmp_path / 'full').fit(full)

    # the same run, interrupted mid-epoch 1 (last.ckpt is from its first validation point)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    manual = tmp_path / 'manual.ckpt'
    crashed = default_trainer(tmp_path / 'cut', callbacks=[SaveThenCrash(manual, 11, 14)])
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(numpy_world(tmp_path))
    last = tmp_path / 'cut' / 'lightning_logs' / 'version_0' / 'checkpoints' / 'last.ckpt'

    for path in (last, manual):
        checkpoint = torch.load(path, weights_only=True)  # raised UnpicklingError before
        meta = checkpoint['lightning']
        assert meta['hparams']['data'] == str(tmp_path / 'data')
        assert type(meta['hparams']['width']) is int and type(meta['hparams']['drop']) is float
        assert type(meta['val_metrics']['val_loss']) is float
        assert type(meta['val_metrics']['seen']) is int
    assert torch.load(last, weights_only=True)['lightning']['position']['batches_done'] == 4

    # a different RNG state everywhere: the checkpoint must bring back all of them
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    resumed = numpy_world(tmp_path)
    default_trainer(tmp_path / 'cut', resume_from_checkpoint=last).fit(resumed)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_rng_states_are_tensors_and_plain_types():
    state = checkpoint_io.capture_rng()
    leaves = []

    def collect(value):
        if isinstance(value, (dict, list, tuple)):
            for item in (value.values() if isinstance(value, dict) else value):
                collect(item)
        else:
            leaves.append(value)

    collect(state)
    assert all(type(v) in (torch.Tensor, int, float, str, type(None)) for v in leaves), \
        [type(v) for v in leaves]
    expected = (random.random(), np.random.rand(), torch.rand(1))
    checkpoint_io.restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_cuda_rng_states_of_more_gpus_than_this_process_sees_restore_those_it_has(monkeypatch):
    """A checkpoint written where two GPUs were visible, resumed where one is: its state."""
    restored = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'set_rng_state_all', restored.extend)
    state = checkpoint_io.capture_rng()
    state['cuda'] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    checkpoint_io.restore_rng(state)
    assert len(restored) == 1 and torch.equal(restored[0], state['cuda'][0])


def test_old_checkpoints_with_numpy_rng_state_still_restore():
    version, internal, gauss = random.getstate()
    old = {'python': (version, np.asarray(internal, dtype=np.uint32), gauss),
           'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    expected = (random.random(), np.random.rand(), torch.rand(1))
    checkpoint_io.restore_rng(old)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_plain_types_converts_what_the_library_writes(tmp_path):
    Pair = collections.namedtuple('Pair', 'a b')

    class Opaque:
        pass

    opaque = Opaque()
    converted = checkpoint_io.plain_types({
        'f32': np.float32(0.5), 'i64': np.int64(3), 'b': np.bool_(False), 's': np.str_('x'),
        'path': pathlib.Path(tmp_path), 'array': np.arange(3, dtype=np.int32),
        'ns': argparse.Namespace(k=np.int8(1)), 'pair': Pair(np.float64(1.5), [np.int16(2)]),
        np.int64(4): 'numpy key', 'tensor': torch.ones(2), 'opaque': opaque,
        'ordered': collections.OrderedDict(z=1)})
    assert converted['f32'] == 0.5 and type(converted['f32']) is float
    assert converted['i64'] == 3 and type(converted['i64']) is int
    assert converted['b'] is False and type(converted['s']) is str
    assert converted['path'] == str(tmp_path)
    assert torch.equal(converted['array'], torch.arange(3, dtype=torch.int32))
    assert converted['ns'] == {'k': 1} and type(converted['ns']['k']) is int
    assert type(converted['pair']) is tuple and converted['pair'] == (1.5, [2])
    assert type(converted['pair'][1][0]) is int
    assert converted[4] == 'numpy key' and all(type(k) in (str, int) for k in converted)
    assert torch.equal(converted['tensor'], torch.ones(2))
    assert converted['opaque'] is opaque  # left as it is (needs weights_only=False)
    assert converted['ordered'] == {'z': 1}


# ------------------------------------------------------------------ bug 6: typed hparams
VALUES = {'hidden': 8, 'lr': 0.5, 'ratio': 2.0, 'use_bn': True, 'name': 'net', 'extra': None,
          'sizes': [4, 8]}


def assert_same_values(actual, expected):
    assert actual == expected
    for key, value in expected.items():
        assert type(actual[key]) is type(value), (key, actual[key], value)


class NamespaceNet(RootModule):
    """Reads its hparams as attributes; builds a layer from an int hparam."""

    def __init__(self, hparams):
        super().__init__(hparams)
        self.layer = nn.Linear(32, hparams.hidden)
        self.head = nn.Linear(hparams.hidden, 2)

    def forward(self, x):
        return self.head(self.layer(x))

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    @property
    def tng_dataloader(self):
        return make_loader(16, 8)


class DictNet(NamespaceNet):
    """Reads its hparams as a dict."""

    def __init__(self, hparams):
        RootModule.__init__(self, hparams)
        self.layer = nn.Linear(32, hparams['hidden'])
        self.head = nn.Linear(hparams['hidden'], 2)


def fitted(model, quiet, folder):
    Trainer(**quiet(checkpoint_callback=ModelCheckpoint(folder))).fit(model)
    return folder / 'last.ckpt'


def test_typed_record_round_trips_through_json(tmp_path):
    hparams = {**VALUES, 'path': pathlib.Path('/data'), 'np_int': np.int64(3),
               'np_float': np.float32(0.25), 'pair': (1, 2), '_private': 1,
               'fn': lambda: None, 'device': torch.device('cpu')}
    record = typed_hparams(hparams)
    assert record['container'] == 'dict'
    save_hparams_file(tmp_path, hparams)
    assert sorted(p.name for p in tmp_path.iterdir()) == [HPARAMS_FILE]  # no temp file left
    assert load_hparams_file(tmp_path) == json.loads(json.dumps(record)) == record
    back = hparams_from_typed(load_hparams_file(tmp_path))
    assert_same_values(back, {**VALUES, 'path': '/data', 'np_int': 3, 'np_float': 0.25,
                              'pair': [1, 2], 'device': 'cpu'})

    namespace = hparams_from_typed(typed_hparams(argparse.Namespace(**VALUES)))
    assert isinstance(namespace, argparse.Namespace)
    assert_same_values(vars(namespace), VALUES)
    assert typed_hparams(None) is None and hparams_from_typed(None) is None
    assert load_hparams_file(tmp_path / 'nowhere') is None


def test_dict_hparams_come_back_as_a_dict_from_checkpoint(quiet, tmp_path):
    model = DictNet(dict(VALUES))
    loaded = DictNet.load_from_checkpoint(fitted(model, quiet, tmp_path / 'c'))
    assert type(loaded.hparams) is dict
    assert_same_values(loaded.hparams, VALUES)
    assert torch.equal(loaded.layer.weight, model.layer.weight)


def test_namespace_hparams_keep_their_types_from_checkpoint(quiet, tmp_path):
    hparams = argparse.Namespace(**VALUES, width=np.int64(8), where=pathlib.Path('/x'))
    model = NamespaceNet(hparams)
    loaded = NamespaceNet.load_from_checkpoint(fitted(model, quiet, tmp_path / 'c'))
    assert isinstance(loaded.hparams, argparse.Namespace)
    assert_same_values(vars(loaded.hparams), {**VALUES, 'width': 8, 'where': '/x'})


def test_checkpoints_from_before_typed_hparams_still_load(quiet, tmp_path):
    path = fitted(NamespaceNet(argparse.Namespace(hidden=4)), quiet, tmp_path / 'c')
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint['lightning']['hparams_typed']  # as written by earlier versions
    torch.save(checkpoint, tmp_path / 'old.ckpt')
    loaded = NamespaceNet.load_from_checkpoint(tmp_path / 'old.ckpt')
    assert vars(loaded.hparams) == {'hidden': 4}


def tagged_experiment(tmp_path, hparams):
    """A real test-tube experiment tagged with ``hparams``: its ``meta_tags.csv`` holds the
    values the way test-tube writes them (an all-number column as floats: ``8.0``)."""
    from test_tube import Experiment
    exp = Experiment(save_dir=str(tmp_path), name='exp', version=0)
    exp.tag(dict(hparams) if isinstance(hparams, dict) else vars(hparams))
    exp.save()
    exp.close()
    folder = tmp_path / 'exp' / 'version_0'
    return folder


@pytest.mark.parametrize('cls, container', [(NamespaceNet, argparse.Namespace), (DictNet, dict)])
def test_load_from_metrics_keeps_types_with_hparams_json(tmp_path, cls, container):
    numeric = {'hidden': 8, 'lr': 0.5}  # test-tube writes this tag column as floats
    hparams = container(**numeric)
    folder = tagged_experiment(tmp_path, hparams)
    assert '8.0' in (folder / 'meta_tags.csv').read_text()
    save_hparams_file(folder, hparams)
    model = cls(hparams)
    weights = tmp_path / 'weights.pt'
    torch.save({'state_dict': model.state_dict()}, weights)
    loaded = cls.load_from_metrics(weights, folder / 'meta_tags.csv')
    assert type(loaded.hparams) is container
    assert_same_values(loaded.hparams if container is dict else vars(loaded.hparams), numeric)
    assert torch.equal(loaded.layer.weight, model.layer.weight)


def test_load_from_metrics_without_hparams_json_reads_the_csv(tmp_path):
    hparams = argparse.Namespace(hidden=8, name='x')  # a str column: test-tube keeps 8
    folder = tagged_experiment(tmp_path, hparams)
    model = NamespaceNet(hparams)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'weights.pt')
    loaded = NamespaceNet.load_from_metrics(tmp_path / 'weights.pt', folder / 'meta_tags.csv')
    assert vars(loaded.hparams) == {'hidden': 8, 'name': 'x'}


# ------------------------------------------------------------------ bug 12: the wrong class
class NeedsDepth(RootModule):
    def __init__(self, hparams):
        super().__init__(hparams)
        self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(hparams.depth))


def test_wrong_class_names_the_saved_class(quiet, tmp_path):
    path = fitted(NamespaceNet(argparse.Namespace(hidden=4)), quiet, tmp_path / 'c')
    with pytest.raises(CheckpointError) as err:
        NeedsDepth.load_from_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and NamespaceNet.__qualname__ in message
    assert NeedsDepth.__qualname__ in message and 'load_from_checkpoint' in message
    assert isinstance(err.value.__cause__, AttributeError)  # the original error is chained

    folder = tagged_experiment(tmp_path, argparse.Namespace(hidden=4))
    with pytest.raises(CheckpointError) as err:
        NeedsDepth.load_from_metrics(path, folder / 'meta_tags.csv')
    assert NamespaceNet.__qualname__ in str(err.value)
    assert isinstance(err.value.__cause__, AttributeError)


def test_same_class_whose_constructor_fails_is_named(quiet, tmp_path):
    path = fitted(NamespaceNet(argparse.Namespace(hidden=4)), quiet, tmp_path / 'c')
    checkpoint = torch.load(path, weights_only=True)
    checkpoint['lightning']['hparams_typed']['values'] = {'hidden': 'four'}
    torch.save(checkpoint, tmp_path / 'bad.ckpt')
    with pytest.raises(CheckpointError) as err:
        NamespaceNet.load_from_checkpoint(tmp_path / 'bad.ckpt')
    assert 'four' in str(err.value) and NamespaceNet.__qualname__ in str(err.value)
    assert isinstance(err.value.__cause__, TypeError)


def test_a_subclass_with_matching_weights_may_load(quiet, tmp_path):
    class FineTuned(NamespaceNet):
        pass

    model = NamespaceNet(argparse.Namespace(hidden=4))
    loaded = FineTuned.load_from_checkpoint(fitted(model, quiet, tmp_path / 'c'))
    assert type(loaded) is FineTuned and torch.equal(loaded.head.weight, model.head.weight)


class CompiledLayer(TinyModel):
    """TinyModel whose layer is compiled (eager backend: traced, not code-generated, so the
    test stays fast); its checkpoint keys read ``layer._orig_mod.weight``."""

    def __init__(self, hparams=None, **kwargs):
        super().__init__(hparams, **kwargs)
        self.layer = torch.compile(self.layer, backend='eager')


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # from torch._dynamo's import
def test_compiled_and_plain_submodules_load_each_others_checkpoints(quiet, tmp_path):
    """torch.compile renames a submodule's weights (``_orig_mod.``): a checkpoint of a model
    that compiles a layer loads into one that does not, and the other way round, and a fit
    resumes across the two; names that differ otherwise still fail."""
    compiled = CompiledLayer()
    trainer = Trainer(**quiet(max_nb_epochs=1, checkpoint_callback=False,
                              early_stop_callback=False))
    trainer.fit(compiled)
    trainer.save_checkpoint(tmp_path / 'compiled.ckpt')
    assert 'layer._orig_mod.weight' in torch.load(tmp_path / 'compiled.ckpt',
                                                  weights_only=True)['state_dict']
    plain = TinyModel.load_from_checkpoint(tmp_path / 'compiled.ckpt')
    assert torch.equal(plain.layer.weight, compiled.layer._orig_mod.weight)

    resumed = Trainer(**quiet(max_nb_epochs=2, checkpoint_callback=False,
                              early_stop_callback=False,
                              resume_from_checkpoint=str(tmp_path / 'compiled.ckpt')))
    resumed.fit(plain)  # the optimizer state follows the parameters' order
    assert resumed.current_epoch == 1
    resumed.save_checkpoint(tmp_path / 'plain.ckpt')
    back = CompiledLayer.load_from_checkpoint(tmp_path / 'plain.ckpt')
    assert torch.equal(back.layer._orig_mod.weight, plain.layer.weight)

    checkpoint = torch.load(tmp_path / 'plain.ckpt', weights_only=True)
    checkpoint['state_dict'] = {key.replace('layer.', 'other.'): value
                                for key, value in checkpoint['state_dict'].items()}
    torch.save(checkpoint, tmp_path / 'renamed.ckpt')
    with pytest.raises(CheckpointError, match='missing keys'):
        TinyModel.load_from_checkpoint(tmp_path / 'renamed.ckpt')

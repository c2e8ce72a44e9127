"""RootModule used outside the loop, as researchers do: loading, the weights summary,
grad_norm, hparams read back from test-tube's CSV."""
import argparse
import csv

import pytest
import torch
from torch import nn

from pytorch_lightning import RootModule, Trainer, checkpoint_io
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.exceptions import CheckpointError
from pytorch_lightning.hparams import read_tags_csv

from models import TinyModel


class LazyNet(RootModule):
    """A model whose first layer learns its input size at the first forward."""

    def __init__(self, hparams=None):
        super().__init__(hparams)
        self.body = nn.LazyLinear(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.body(x))


class SparseEmbedding(RootModule):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4, sparse=True)
        self.out = nn.Linear(4, 1)


class Tied(RootModule):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4, bias=False)
        self.dec = nn.Linear(4, 4, bias=False)
        self.dec.weight = self.enc.weight


def checkpoint_of(model, path, hparams=None):
    """A checkpoint as the trainer writes its model part (the trainer's state left out)."""
    checkpoint = dict(model.get_save_dict())
    checkpoint[checkpoint_io.KEY] = {'model_class': checkpoint_io.class_name(type(model)),
                                     'hparams': hparams or {}}
    torch.save(checkpoint, path)
    return path


# ---------------------------------------------------------------------- weights summary
def test_summarize_a_lazy_model_before_its_first_forward(capsys):
    """fit prints the summary before any batch, when a LazyLinear has no shape yet: the
    summary says so instead of crashing the fit."""
    text = LazyNet().summarize()
    rows = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert rows['head'].endswith('8')
    assert 'uninitialized' in rows['body'] and 'uninitialized' in rows['(total)']
    assert text in capsys.readouterr().out


def test_summarize_counts_tied_weights_once_in_the_total():
    text = Tied().summarize()
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines()[1:]}
    assert rows == {'(total)': '16', 'enc': '16', 'dec': '16'}


# ---------------------------------------------------------------------- grad_norm
def test_grad_norm_of_a_sparse_embedding_gradient():
    """choose_optimizer offers sparse_adam, so sparse gradients reach track_grad_norm. The
    repeated index makes an uncoalesced gradient: its norm is that of the summed rows."""
    model = SparseEmbedding()
    model.out(model.emb(torch.tensor([1, 2, 2]))).sum().backward()
    dense = model.emb.weight.grad.to_dense()
    for norm_type in (1, 2, float('inf')):
        norms = model.grad_norm(norm_type)
        key = f'grad_{float(norm_type):g}_norm_emb.weight'
        expected = torch.linalg.vector_norm(dense, norm_type).item()
        assert norms[key] == pytest.approx(expected, abs=1e-4)


def test_grad_norm_inf_names_keys_and_takes_the_largest_entry():
    model = Tied()
    model.enc(torch.ones(1, 4)).sum().backward()
    norms = model.grad_norm('inf')
    assert set(norms) == {'grad_inf_norm_enc.weight', 'grad_inf_norm_total'}
    largest = round(model.enc.weight.grad.abs().max().item(), 4)
    assert norms['grad_inf_norm_total'] == norms['grad_inf_norm_enc.weight'] == largest


# ---------------------------------------------------------------------- loading
def test_load_from_checkpoint_a_lazy_model(tmp_path):
    """The freshly built model's LazyLinear has no shape yet; load_state_dict gives it the
    saved one, so the weight check must not read its shape."""
    trained = LazyNet()
    trained(torch.zeros(2, 5))
    path = checkpoint_of(trained, tmp_path / 'lazy.ckpt')
    model = LazyNet.load_from_checkpoint(path)
    torch.testing.assert_close(model.body.weight, trained.body.weight)
    torch.testing.assert_close(model(torch.ones(1, 5)), trained(torch.ones(1, 5)))


class LazyTiny(TinyModel):
    def __init__(self, hparams=None):
        super().__init__(hparams)
        self.layer = nn.LazyLinear(2)


def test_a_lazy_model_fits_with_the_summary_on_and_loads_back(quiet, tmp_path):
    """The researcher's path: fit with the default weights summary, then load the best."""
    model = LazyTiny({'width': 2})
    Trainer(**quiet(print_weights_summary=True,
                    checkpoint_callback=ModelCheckpoint(tmp_path / 'ck'))).fit(model)
    loaded = LazyTiny.load_from_checkpoint(tmp_path / 'ck' / 'last.ckpt')
    assert loaded.hparams == {'width': 2}
    torch.testing.assert_close(loaded.layer.weight, model.layer.weight)


@pytest.mark.parametrize('content', [b'', b'not a torch file' * 8, None],
                         ids=['empty', 'corrupt', 'missing'])
def test_load_from_metrics_unreadable_weights_raise_checkpoint_error(tmp_path, content):
    """load_from_metrics: a truncated, corrupt or missing weights file is a CheckpointError
    that names the file (docs/api.md), not torch's unpickling error."""
    tags = tmp_path / 'meta_tags.csv'
    tags.write_text('key,value\nlr,0.1\n')
    weights = tmp_path / 'weights.ckpt'
    if content is not None:
        weights.write_bytes(content)
    with pytest.raises(CheckpointError, match='weights.ckpt'):
        Tied.load_from_metrics(weights_path=str(weights), tags_csv=str(tags))


def test_load_from_metrics_state_dict_only_file_says_how_to_load_it(tmp_path):
    tags = tmp_path / 'meta_tags.csv'
    tags.write_text('key,value\n')
    weights = tmp_path / 'weights.pt'
    torch.save(Tied().state_dict(), weights)
    with pytest.raises(CheckpointError, match=r'load_state_dict'):
        Tied.load_from_metrics(weights_path=str(weights), tags_csv=str(tags))


# ---------------------------------------------------------------------- meta_tags.csv
def test_tags_csv_gives_infinite_floats_back_as_floats(tmp_path):
    """test-tube writes float('inf') (e.g. a clipping threshold turned off) as 'inf'."""
    path = tmp_path / 'meta_tags.csv'
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerows([('key', 'value'), ('clip', 'inf'), ('floor', '-inf'),
                          ('name', 'adam'), ('missing', '')])
    tags = read_tags_csv(path)
    assert tags == {'clip': float('inf'), 'floor': float('-inf'), 'name': 'adam',
                    'missing': None}
    assert isinstance(argparse.Namespace(**tags).clip, float)

"""The RootModule contract and its helpers."""
import pickle

import pytest
import torch
from torch import nn

from pytorch_lightning import MisconfigurationException, RootModule
from pytorch_lightning.optim import OPTIMIZERS, normalize_optimizers


class NoSuper(RootModule):
    def __init__(self):  # the seed's form: no super().__init__()
        self.l1 = nn.Linear(4, 3)


class WithSuper(RootModule):
    def __init__(self, hparams):
        super().__init__(hparams)
        self.l1 = nn.Linear(4, 3)


def test_init_without_super_registers_parameters():
    model = NoSuper()
    assert [n for n, _ in model.named_parameters()] == ['l1.weight', 'l1.bias']
    assert model.hparams is None
    model.hparams = {'lr': 1}
    assert model.hparams == {'lr': 1}
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone.l1.weight, model.l1.weight)


def test_init_with_super_keeps_hparams_and_layers():
    model = WithSuper({'a': 1})
    assert model.hparams == {'a': 1} and len(list(model.parameters())) == 2


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_choose_optimizer_builds_each_known_name(name):
    layer = nn.Embedding(5, 2, sparse=True) if name == 'sparse_adam' else nn.Linear(2, 2)
    opt = NoSuper().choose_optimizer(name.upper(), layer.parameters(), {'lr': 0.01}, 'optimizer')
    assert isinstance(opt, OPTIMIZERS[name]) and opt.param_groups[0]['lr'] == 0.01


def test_freeze_unfreeze():
    model = NoSuper()
    model.freeze()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.unfreeze()
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_grad_norm_matches_torch():
    model = NoSuper()
    model.l1(torch.randn(8, 4)).pow(2).sum().backward()
    norms = model.grad_norm(2)
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    assert norms['grad_2_norm_total'] == pytest.approx(total, abs=1e-3)
    assert norms['grad_2_norm_l1.weight'] == pytest.approx(model.l1.weight.grad.norm().item(), abs=1e-3)


def test_grad_norm_reads_the_device_once(monkeypatch):
    """All the norms come back in one transfer (a host sync per parameter on a GPU before)."""
    model = NoSuper()
    model.l1(torch.randn(8, 4)).pow(2).sum().backward()
    reads = []
    for name in ('item', 'tolist'):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _real=real, **k: reads.append(1) or _real(self, *a, **k))
    norms = model.grad_norm(2)
    assert len(reads) == 1 and len(norms) == 3  # weight, bias, total


def test_summarize_lists_layers_and_counts(capsys):
    text = NoSuper().summarize()
    assert 'l1' in text and 'Linear' in text and '15' in text
    assert text in capsys.readouterr().out


def test_default_save_and_load_round_trip():
    a, b = NoSuper(), NoSuper()
    b.load_model_specific(a.get_save_dict())
    torch.testing.assert_close(a.l1.weight, b.l1.weight)


def test_default_validation_end_averages_shared_scalars():
    outs = [{'val_loss': torch.tensor(1.0), 'n': 2, 'name': 'x'},
            {'val_loss': torch.tensor(3.0), 'n': 4}]
    metrics = NoSuper().validation_end(outs)
    assert set(metrics) == {'val_loss', 'n'}
    assert metrics['val_loss'].item() == 2.0 and metrics['n'] == 3


def test_normalize_optimizers_forms():
    p = [nn.Parameter(torch.zeros(1))]
    a, b = torch.optim.SGD(p, lr=1), torch.optim.SGD(p, lr=1)
    sched = torch.optim.lr_scheduler.StepLR(a, 1)
    def forms(result):
        out = normalize_optimizers(result)
        return out.optimizers, [c['scheduler'] for c in out.schedulers], out.frequencies

    assert forms(a) == ([a], [], None)
    assert forms([a, b]) == ([a, b], [], None)
    assert forms(([a], [sched])) == ([a], [sched], None)
    assert normalize_optimizers(([a], [sched])).schedulers[0]['interval'] == 'epoch'
    with pytest.raises(MisconfigurationException, match='configure_optimizers'):
        normalize_optimizers(None)


def test_add_model_specific_args_default_returns_parser():
    from test_tube import HyperOptArgumentParser
    parser = HyperOptArgumentParser(strategy='grid_search')
    assert RootModule.add_model_specific_args(parser) is parser

"""Tiny models shared by the tests: 32 -> 2 on random tensors."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pytorch_lightning import RootModule


def make_loader(n=64, batch_size=8, seed=0, shuffle=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=gen)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)


class TinyModel(RootModule):
    """Classic-form model: training/validation/test steps, one Adam optimizer."""

    def __init__(self, hparams=None, n=64, batch_size=8, lr=0.05):
        super().__init__(hparams)
        self.layer = nn.Linear(32, 2)
        self.n, self.batch_size, self.lr = n, batch_size, lr

    def forward(self, x):
        return self.layer(x)

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        loss = nn.functional.cross_entropy(self(x), y)
        return loss, {'train_loss': loss}

    def validation_step(self, data_batch, batch_nb):
        x, y = data_batch
        out = self(x)
        acc = (out.argmax(1) == y).float().mean()
        return nn.functional.cross_entropy(out, y), {'val_acc': acc}

    def test_step(self, data_batch, batch_nb):
        x, y = data_batch
        out = self(x)
        return {'test_acc': (out.argmax(1) == y).float().mean()}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    @property
    def tng_dataloader(self):
        return make_loader(self.n, self.batch_size, seed=0)

    @property
    def val_dataloader(self):
        return make_loader(32, self.batch_size, seed=1)

    @property
    def test_dataloader(self):
        return make_loader(32, self.batch_size, seed=2)


class TrainOnlyModel(RootModule):
    """No validation at all; bare-loss training_step."""

    def __init__(self, n=64, batch_size=8):
        super().__init__()
        self.layer = nn.Linear(32, 2)
        self.n, self.batch_size = n, batch_size

    def training_step(self, data_batch):
        x, y = data_batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return make_loader(self.n, self.batch_size)

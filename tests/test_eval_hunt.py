"""Evaluation and data handling in the combinations researchers use: validation points inside
accumulation windows, several val/test loaders (one empty), ``test()`` after and without
``fit``, submodule train/eval modes around evaluation, and the trainer's copy of a training
DataLoader drawing exactly the batches the user's own loader draws."""
import csv
import glob
import os

import pytest
import torch
from torch import nn
from torch.utils.data import (BatchSampler, DataLoader, Sampler, TensorDataset,
                              WeightedRandomSampler)

from models import TinyModel, make_loader
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback


class SGDModel(TinyModel):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


# ---------------------------------------------------------------- modes around evaluation
class FrozenNorm(SGDModel):
    """Fine-tuning with a frozen BatchNorm: the user puts it in eval mode at each epoch start
    (``fit`` switches the whole model to train mode first); its running statistics must not
    move. Records the modes in every step."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = nn.BatchNorm1d(32)
        self.train_modes, self.val_modes = [], []

    def on_epoch_start(self):
        self.norm.eval()

    def forward(self, x):
        return self.layer(self.norm(x))

    def training_step(self, data_batch, batch_nb):
        self.train_modes.append((self.training, self.norm.training))
        return super().training_step(data_batch, batch_nb)

    def validation_step(self, data_batch, batch_nb):
        self.val_modes.append((self.training, self.norm.training, torch.is_grad_enabled()))
        return super().validation_step(data_batch, batch_nb)


def test_a_submodule_frozen_in_eval_mode_stays_frozen_across_validation_and_test(quiet):
    """docs/trainer.md: the model is "returned to its previous mode" after validation. A
    BatchNorm the user froze must stay in eval mode, and its running stats must not move."""
    model = FrozenNorm(n=32)
    stats = model.norm.running_mean.clone()
    trainer = Trainer(**quiet(val_check_interval=2, nb_sanity_val_steps=0, max_nb_epochs=2))
    trainer.fit(model)
    assert set(model.val_modes) == {(False, False, False)}
    assert model.train_modes and set(model.train_modes) == {(True, False)}
    assert torch.equal(model.norm.running_mean, stats)
    trainer.test()
    assert model.training and not model.norm.training

"""Truncated back-propagation through time: Trainer(truncated_bptt_steps=k)."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pytorch_lightning import MisconfigurationException, RootModule, Trainer


class Echo(RootModule):
    """An LSTM that must repeat its input 2 steps later: the answer crosses split borders,
    so it needs the hidden state passed from split to split."""

    def __init__(self, seq=12):
        super().__init__()
        self.lstm, self.head = nn.LSTM(1, 16, batch_first=True), nn.Linear(16, 1)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(64, seq, 1, generator=gen)
        y = torch.cat([torch.zeros(64, 2, 1), x[:, :-2]], dim=1)
        self.data = TensorDataset(x, y)
        self.seen = []

    def training_step(self, data_batch, batch_nb, hiddens):
        x, y = data_batch
        self.seen.append((batch_nb, x.shape[1], hiddens is None,
                          hiddens is not None and hiddens[0].requires_grad))
        out, hiddens = self.lstm(x, hiddens)
        loss = nn.functional.mse_loss(self.head(out), y)
        return {'loss': loss, 'hiddens': hiddens}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)

    @property
    def tng_dataloader(self):
        return DataLoader(self.data, batch_size=16)


def test_each_split_sees_k_steps_and_the_previous_hiddens(quiet):
    model = Echo(seq=12)
    trainer = Trainer(**quiet(truncated_bptt_steps=5, max_nb_epochs=1))
    trainer.fit(model)
    # 4 batches, each split into 5 + 5 + 2 steps: one optimizer step per split
    assert [s[1] for s in model.seen] == [5, 5, 2] * 4
    assert [s[2] for s in model.seen] == [True, False, False] * 4  # None on each first split
    assert not any(s[3] for s in model.seen)                       # detached between splits
    assert trainer.global_step == 12 and trainer.state.total_batches == 4


def test_tbptt_learns_across_splits(quiet):
    torch.manual_seed(0)
    model = Echo(seq=12)
    losses = []

    from pytorch_lightning.callbacks import Callback

    class Loss(Callback):
        def on_batch_end(self, trainer, module):
            losses.append(trainer.last_loss.item())

    Trainer(**quiet(truncated_bptt_steps=4, max_nb_epochs=30, callbacks=[Loss()])).fit(model)
    assert sum(losses[-4:]) < sum(losses[:4]) / 3


def test_tbptt_errors_before_the_first_batch(quiet):
    with pytest.raises(MisconfigurationException, match='accumulate_grad_batches=1'):
        Trainer(**quiet(truncated_bptt_steps=4, accumulate_grad_batches=2)).fit(Echo())

    class NoHiddens(Echo):
        def training_step(self, data_batch, batch_nb):
            return super().training_step(data_batch, batch_nb, None)

    with pytest.raises(MisconfigurationException, match='hiddens'):
        Trainer(**quiet(truncated_bptt_steps=4)).fit(NoHiddens())
    with pytest.raises(MisconfigurationException, match='truncated_bptt_steps=0'):
        Trainer(**quiet(truncated_bptt_steps=0)).fit(Echo())


def test_default_split_slices_tensors_along_time():
    model = Echo()
    x, y, tag = torch.zeros(2, 7, 1), torch.ones(2, 7), 'meta'
    splits = model.tbptt_split_batch([x, y, tag], 3)
    assert [s[0].shape[1] for s in splits] == [3, 3, 1] and all(s[2] == 'meta' for s in splits)
    assert [t.shape[1] for t in model.tbptt_split_batch(x, 4)] == [4, 3]


def test_tbptt_with_two_optimizers_passes_optimizer_i_then_hiddens(quiet):
    seen = []

    class Two(Echo):
        def training_step(self, data_batch, batch_nb, optimizer_i, hiddens):
            seen.append(optimizer_i)
            return super().training_step(data_batch, batch_nb, hiddens)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.lstm.parameters(), lr=0.01),
                    torch.optim.SGD(self.head.parameters(), lr=0.01)]

    Trainer(**quiet(truncated_bptt_steps=6, max_nb_epochs=1)).fit(Two(seq=12))
    assert seen == [0, 1] * 8  # 4 batches x 2 splits, each optimizer per split

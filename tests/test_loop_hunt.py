"""Bug hunt in the loop features researchers combine: truncated BPTT, gradient accumulation
windows, the progress bar's totals and postfix."""
import re
import subprocess
import sys
import textwrap
from collections import namedtuple

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from pytorch_lightning import RootModule, Trainer


State = namedtuple('State', 'h c')


class NamedHiddens(RootModule):
    """An LSTM whose training_step passes its state as ``{'h': ..., 'c': ...}`` (``pack=dict``)
    or as the named tuple ``State(h, c)``."""

    def __init__(self, pack):
        super().__init__()
        torch.manual_seed(0)
        self.pack = pack
        self.lstm, self.head = nn.LSTM(1, 4, batch_first=True), nn.Linear(4, 1)
        self.seen = []

    def training_step(self, data_batch, batch_nb, hiddens):
        x, y = data_batch
        if hiddens is not None:
            assert type(hiddens) is self.pack
            hiddens = State(**hiddens) if self.pack is dict else hiddens
        self.seen.append(None if hiddens is None else
                         (hiddens.h.requires_grad, hiddens.c.requires_grad))
        out, (h, c) = self.lstm(x, hiddens)
        loss = nn.functional.mse_loss(self.head(out), y)
        return {'loss': loss, 'hiddens': self.pack(h=h, c=c)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    @property
    def tng_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(8, 6, 1, generator=gen)
        return DataLoader(TensorDataset(x, x.flip(1)), batch_size=4)


@pytest.mark.parametrize('pack', [dict, State])
def test_tbptt_hiddens_as_a_dict_or_named_tuple_are_detached_between_splits(quiet, pack):
    """docs/api.md: the previous split's ``'hiddens'`` reach the next split detached from its
    graph, in the container they came in. A dict of tensors was passed on with its graph (the
    second split's backward went through the freed first graph: a misleading 'already
    backpropagated' error); a named tuple was rebuilt from one argument (TypeError)."""
    model = NamedHiddens(pack)
    trainer = Trainer(**quiet(truncated_bptt_steps=2, max_nb_epochs=1))
    trainer.fit(model)
    assert model.seen == [None, (False, False), (False, False)] * 2
    assert trainer.global_step == 6


class Stream(IterableDataset):
    """5 batches of 4 rows and no ``len()``."""

    def __iter__(self):
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):
            x = torch.randn(4, 3, generator=gen)
            yield x, x.sum(1, keepdim=True)


class Linear(RootModule):
    def __init__(self, loader):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.loader = loader

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        return {'loss': nn.functional.mse_loss(self.layer(x), y)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    @property
    def tng_dataloader(self):
        return self.loader


def test_an_unsized_loaders_last_partial_window_is_divided_by_k(quiet):
    """docs/trainer.md: with an epoch length unknown the window size is ``k``; a partial
    window at the loader's end is still stepped, its losses divided by ``k``. Checked against
    a hand loop: 5 batches, k=2: windows (0,1), (2,3), (4)/2."""
    model = Linear(DataLoader(Stream(), batch_size=None))
    trainer = Trainer(**quiet(accumulate_grad_batches=2, max_nb_epochs=1))
    trainer.fit(model)

    torch.manual_seed(0)
    layer = nn.Linear(3, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    batches = list(Stream())
    for window in ([0, 1], [2, 3], [4]):
        for i in window:
            x, y = batches[i]
            (nn.functional.mse_loss(layer(x), y) / 2).backward()
        opt.step()
        opt.zero_grad()
    assert trainer.global_step == 3
    assert torch.equal(model.layer.weight, layer.weight)
    assert torch.equal(model.layer.bias, layer.bias)


class Scheduled(RootModule):
    """SGD with momentum and a step-wise StepLR, over a shuffled loader of 6 batches; one
    validation batch."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Sequential(nn.Dropout(0.3), nn.Linear(3, 1))

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        return {'loss': nn.functional.mse_loss(self.layer(x), y)}

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {'optimizer': opt, 'lr_scheduler': {'scheduler': sched, 'interval': 'step'}}

    def validation_step(self, data_batch, batch_nb):
        x, y = data_batch
        return {'val_loss': nn.functional.mse_loss(self.layer(x), y)}

    @property
    def val_dataloader(self):
        x = torch.ones(4, 3)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)

    @property
    def tng_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(24, 3, generator=gen)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4,
                          shuffle=True, generator=torch.Generator().manual_seed(1))


def test_resume_inside_a_window_of_a_changed_schedule_matches_uninterrupted(quiet, tmp_path):
    """docs/trainer.md + checkpointing: ``accumulate_grad_batches={0: 1, 1: 4}`` (epoch 0:
    6 windows of 1; epochs 1-2: windows of 4 then of 2, the short last one divided by 2) with
    a step-wise scheduler, interrupted in epoch 1 inside its first window and resumed from
    the validation point (every 2 batches) that saved ``last.ckpt`` 2 batches into that
    window: the weights, the learning rate and global_step equal the uninterrupted run's,
    bit for bit, and the resumed epoch's bar starts where the checkpoint was."""
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint, ProgressBar

    def trainer(folder, **kw):
        return Trainer(**quiet(max_nb_epochs=3, accumulate_grad_batches={0: 1, 1: 4},
                               early_stop_callback=False, val_check_interval=2,
                               nb_sanity_val_steps=0, checkpoint_callback=ModelCheckpoint(folder),
                               **kw))

    torch.manual_seed(0)
    full = Scheduled()
    done = trainer(tmp_path / 'a')
    done.fit(full)
    assert done.global_step == 6 + 2 * 2
    # the step-wise StepLR(step_size=2) stepped once per optimizer step (window), not batch
    assert done.optimizers[0].param_groups[0]['lr'] == 0.1 * 0.5 ** 5

    class Crash(Callback):
        def on_batch_start(self, trainer, module, batch):
            if trainer.state.total_batches == 8:  # epoch 1, batch 2: 2 batches into a window
                assert trainer.state.accumulation_position == 2
                raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / 'b', callbacks=[Crash()]).fit(Scheduled())
    restored, bar = [], []

    class Restored(Callback):
        def on_fit_start(self, trainer, module):
            restored.append((trainer.current_epoch, trainer.state.accumulation_position))

    class Bar(ProgressBar):
        def on_epoch_start(self, trainer, module):
            super().on_epoch_start(trainer, module)
            bar.append(('start', self._bar.initial, self._bar.n, self._bar.total))

        def on_epoch_end(self, trainer, module):
            super().on_epoch_end(trainer, module)
            bar.append(('end', self._bar.n, self._bar.total))

    torch.manual_seed(123)
    resumed = Scheduled()
    again = trainer(tmp_path / 'b', resume_from_checkpoint=tmp_path / 'b' / 'last.ckpt',
                    callbacks=[Restored(), Bar(refresh_interval=0)])
    again.fit(resumed)
    assert restored == [(1, 2)]  # (epoch, batches accumulated) the resume started from
    # docs/trainer.md nb_batches_done_at_epoch_start: the bar of the resumed epoch starts at
    # its 2 training batches plus the 1 validation batch of the point among them, of 6 + 3
    assert bar == [('start', 3, 3, 9), ('end', 9, 9), ('start', 0, 0, 9), ('end', 9, 9)]
    assert again.global_step == done.global_step
    assert again.optimizers[0].param_groups[0]['lr'] == done.optimizers[0].param_groups[0]['lr']
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


REPLAYED = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from pytorch_lightning import RootModule, Trainer
    from pytorch_lightning.callbacks import Callback

    class Batches:  # a loader the trainer cannot rebuild: a mid-epoch resume replays it
        def __len__(self):
            return 4

        def __iter__(self):
            gen = torch.Generator().manual_seed(0)
            for _ in range(4):
                x = torch.randn(2, 3, generator=gen)
                yield x, x.sum(1, keepdim=True)

    class Model(RootModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 1)

        def training_step(self, data_batch, batch_nb):
            x, y = data_batch
            return nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, data_batch, batch_nb):
            x, y = data_batch
            return {'val_loss': nn.functional.mse_loss(self.layer(x), y)}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        @property
        def tng_dataloader(self):
            return Batches()

        @property
        def val_dataloader(self):
            return Batches()

    class Crash(Callback):
        def on_batch_start(self, trainer, module, batch):
            if trainer.state.total_batches == 3:
                raise KeyboardInterrupt

    kwargs = dict(default_save_path=sys.argv[1], experiment=False, print_weights_summary=False,
                  max_nb_epochs=1, val_check_interval=2, nb_sanity_val_steps=0,
                  early_stop_callback=False)
    try:
        Trainer(progress_bar=False, callbacks=[Crash()], **kwargs).fit(Model())
    except KeyboardInterrupt:
        pass
    Trainer(resume_from_checkpoint=sys.argv[1] + '/checkpoints/last.ckpt', **kwargs).fit(Model())
""")


def test_the_replay_notice_of_a_mid_epoch_resume_is_a_line_of_its_own(tmp_path):
    """docs/trainer.md: notices are printed clear of the bar. Resuming mid-epoch from a loader
    the trainer cannot rebuild prints that its done batches are replayed; it is printed once
    the resumed epoch's bar is drawn, and a plain print() glued it to the bar's line."""
    log = tmp_path / 'fit.log'
    with open(log, 'w') as out:
        subprocess.run([sys.executable, '-u', '-c', REPLAYED, str(tmp_path)], stdout=out,
                       stderr=subprocess.STDOUT, check=True, timeout=120)
    text = log.read_text()
    records = [r.strip() for r in re.split(r'[\r\n]', text) if r.strip()]
    assert any(r.startswith('resuming mid-epoch: the training loader is a Batches') for r in
               records), text


class TwoOptimizers(RootModule):
    """Optimizer 0 trains an LSTM and returns its state in the dict form; optimizer 1 trains
    a head and returns ``form``: a bare loss, a ``(loss, prog)`` tuple or a dict without
    ``'hiddens'``."""

    def __init__(self, form):
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.head = nn.LSTM(1, 4, batch_first=True), nn.Linear(4, 1)
        self.form, self.seen = form, []

    def training_step(self, data_batch, batch_nb, optimizer_i, hiddens):
        x, y = data_batch
        self.seen.append((optimizer_i, hiddens is None))
        out, state = self.lstm(x, hiddens)
        loss = nn.functional.mse_loss(self.head(out), y)
        if optimizer_i == 0:
            return {'loss': loss, 'hiddens': state}
        return {'tensor': loss, 'tuple': (loss, {}), 'dict': {'loss': loss}}[self.form]

    def configure_optimizers(self):
        return [torch.optim.SGD(self.lstm.parameters(), lr=0.01),
                torch.optim.SGD(self.head.parameters(), lr=0.01)]

    @property
    def tng_dataloader(self):
        x = torch.randn(4, 6, 1, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, x), batch_size=4)


@pytest.mark.parametrize('form', ['tensor', 'tuple', 'dict'])
def test_tbptt_two_optimizers_pass_on_the_last_ones_hiddens_whatever_its_form(quiet, form):
    """docs/api.md: with several optimizers the last one's ``hiddens`` are passed on, and a
    step returning no ``'hiddens'`` passes ``None``. A dict without ``'hiddens'`` did; a bare
    loss or a ``(loss, prog)`` tuple left optimizer 0's in place, so the next split's
    ``hiddens`` depended on the form the last optimizer returned."""
    model = TwoOptimizers(form)
    Trainer(**quiet(truncated_bptt_steps=2, max_nb_epochs=1)).fit(model)
    assert model.seen == [(0, True), (1, True)] * 3


class Counted(RootModule):
    """Each split's loss is the number of training steps before it (0, 1, 2, ...), plus a
    zero that keeps the graph; its prog dict names the split."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.calls = 0

    def training_step(self, data_batch, batch_nb, hiddens):
        x, = data_batch
        loss = self.layer(x).sum() * 0 + self.calls
        self.calls += 1
        return {'loss': loss, 'hiddens': None, 'prog': {'split': float(x.shape[1])}}

    def validation_step(self, data_batch, batch_nb):
        return {'val_score': torch.tensor(0.25)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    @property
    def tng_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(10, 5, 1)), batch_size=1)

    @property
    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(2, 5, 1)), batch_size=1)


def test_the_bar_postfix_holds_the_running_loss_of_the_last_20_steps_prog_and_val(quiet):
    """docs/trainer.md tqdm_metrics / running_loss(): the postfix is epoch, batch_nb, the mean
    of the last 20 training losses (every TBPTT split's loss is one: 10 batches x 3 splits,
    losses 0..29, so the mean of 10..29) with 3 decimals, the last step's prog dict and the
    latest validation metrics."""
    trainer = Trainer(**quiet(truncated_bptt_steps=2, nb_sanity_val_steps=0,
                              early_stop_callback=False, checkpoint_callback=False))
    trainer.fit(Counted())
    assert trainer.running_loss() == sum(range(10, 30)) / 20
    assert trainer.tqdm_metrics == {'epoch': 0, 'batch_nb': 9, 'loss': '19.500', 'split': 1.0,
                                    'val_score': 0.25}


@pytest.mark.parametrize('interval', [None, '0.5', -1, float('nan'), True])
def test_a_bad_refresh_interval_is_refused_when_the_bar_is_made(interval):
    """docs/callbacks.md: ``refresh_interval`` is the least time in seconds between redraws.
    ``None`` or a string failed with a TypeError after the first training batch; a negative
    or NaN interval was taken silently."""
    from pytorch_lightning import MisconfigurationException
    from pytorch_lightning.callbacks import ProgressBar
    with pytest.raises(MisconfigurationException, match=r'refresh_interval=.*>= 0'):
        ProgressBar(refresh_interval=interval)


def test_default_split_names_a_tensor_without_a_time_dimension():
    """docs/api.md: the default ``tbptt_split_batch`` slices every tensor along dim 1. A batch
    ``(x, labels)`` with one label per sequence failed inside it with torch's 'too many
    indices' IndexError; the message now names the item, its shape and the override."""
    from pytorch_lightning import MisconfigurationException
    batch = (torch.zeros(2, 6, 1), torch.zeros(2))
    with pytest.raises(MisconfigurationException, match=r'item 1 .*\(2,\).*tbptt_split_batch'):
        RootModule().tbptt_split_batch(batch, 2)


def test_tbptt_under_dataparallel_is_refused_before_the_first_batch(quiet, two_fake_gpus):
    """DataParallel splits each batch over the replicas but hands ``hiddens`` whole to every
    one (its batch dimension is the model's choice: dim 1 for an LSTM's (h, c)), and
    concatenates the replicas' returned hiddens along dim 0: the second split failed with
    a shape error or, worse, trained on mixed-up states. Refused before the first batch."""
    from test_devices_loop import FakeTwoGPUs

    from pytorch_lightning import MisconfigurationException
    model = NamedHiddens(State)
    trainer = Trainer(**quiet(truncated_bptt_steps=2, max_nb_epochs=1))
    trainer.device = FakeTwoGPUs()
    with pytest.raises(MisconfigurationException, match='truncated_bptt_steps=2.*DataParallel'):
        trainer.fit(model)
    assert model.seen == []

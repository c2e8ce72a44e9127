"""configure_optimizers' dict forms: optimizers taking turns by batch (frequencies),
step-wise LR schedulers, the logged learning rates, and their errors."""
import csv
import re

import pytest
import torch
from torch import nn

from pytorch_lightning import MisconfigurationException, Trainer
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.callbacks.logging import lr_names

from models import TinyModel


class GAN(TinyModel):
    """Two optimizers over two halves of a model; frequencies [5, 1] (a critic's 5 steps per
    generator step)."""

    def __init__(self, frequencies=(5, 1), **kwargs):
        super().__init__(**kwargs)
        self.critic = nn.Linear(32, 2)
        self.frequencies, self.calls = frequencies, []

    def training_step(self, data_batch, batch_nb, optimizer_i):
        self.calls.append((self.trainer.state.total_batches, optimizer_i))
        x, y = data_batch
        net = self.critic if optimizer_i == 0 else self.layer
        loss = nn.functional.cross_entropy(net(x), y)
        return {'loss': loss, 'log': {f'loss_{optimizer_i}': loss}}

    def configure_optimizers(self):
        return [{'optimizer': torch.optim.SGD(self.critic.parameters(), lr=0.1),
                 'frequency': self.frequencies[0]},
                {'optimizer': torch.optim.SGD(self.layer.parameters(), lr=0.1),
                 'frequency': self.frequencies[1]}]


def test_frequencies_take_turns_and_idle_steps_do_not_run(quiet):
    model = GAN(n=96)  # 12 batches per epoch
    trainer = Trainer(**quiet(max_nb_epochs=2, nb_sanity_val_steps=0))
    trainer.fit(model)
    assert [opt for _, opt in model.calls] == ([0] * 5 + [1]) * 4  # 24 batches, one step each
    assert trainer.state.optimizer_steps == [20, 4] and trainer.global_step == 24


def test_frequencies_resume_continues_the_cycle(quiet, tmp_path):
    full = GAN(n=56)  # 7 batches per epoch: a cycle of 6 crosses the epoch boundary
    Trainer(**quiet(max_nb_epochs=2, nb_sanity_val_steps=0)).fit(full)
    first = GAN(n=56)
    Trainer(**quiet(max_nb_epochs=1, nb_sanity_val_steps=0,
                    checkpoint_callback=ModelCheckpoint(tmp_path / 'c'))).fit(first)
    resumed = GAN(n=56)
    trainer = Trainer(**quiet(max_nb_epochs=2, nb_sanity_val_steps=0,
                              resume_from_checkpoint=tmp_path / 'c' / 'last.ckpt'))
    trainer.fit(resumed)
    assert first.calls + resumed.calls == full.calls
    assert trainer.state.optimizer_steps == [12, 2]


class StepScheduled(TinyModel):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        return {'optimizer': opt, 'lr_scheduler': {
            'scheduler': torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step),
            'interval': 'step', 'frequency': 2}}


def test_step_scheduler_steps_every_frequency_optimizer_steps(quiet):
    seen = []

    class Lr(Callback):
        def on_batch_end(self, trainer, module):
            seen.append(trainer.optimizers[0].param_groups[0]['lr'])

    Trainer(**quiet(max_nb_epochs=1, nb_sanity_val_steps=0, accumulate_grad_batches=2,
                    callbacks=[Lr()])).fit(StepScheduled())
    # 8 batches, windows of 2: 4 optimizer steps, the scheduler every 2 of them
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_learning_rates_are_logged_per_optimizer_and_group(tmp_path):
    p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opts = [torch.optim.SGD([{'params': [p]}, {'params': [q], 'lr': 0.01}], lr=0.1),
            torch.optim.SGD([p], lr=0.2), torch.optim.Adam([q], lr=0.3)]
    assert list(lr_names(opts).values()) == ['lr-SGD-0', 'lr-SGD-0/pg1', 'lr-SGD-1', 'lr-Adam']
    Trainer(default_save_path=str(tmp_path), progress_bar=False, print_weights_summary=False,
            max_nb_epochs=1, add_log_row_interval=4).fit(StepScheduled())
    with open(tmp_path / 'lightning_logs' / 'version_0' / 'metrics.csv') as f:
        rows = [r for r in csv.DictReader(f) if r['train_loss']]
    # 8 optimizer steps, the scheduler halving every 2: after batch 4 and batch 8
    assert [float(r['lr-SGD']) for r in rows] == [0.25, 0.0625]


@pytest.mark.parametrize('result, text', [
    ({'optimizer': 'adam'}, "'optimizer' is str"),
    ({'optimiser': None}, "unknown keys ['optimiser']"),
    ({'lr_scheduler': None}, "no 'optimizer' key"),
    ('scheduler-dict', "'interval' is 'hourly'"),
    ('frequency-mix', "each needs an int >= 1"),
])
def test_malformed_dicts_name_the_key(quiet, result, text):
    class Bad(TinyModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            if result == 'scheduler-dict':
                return {'optimizer': opt, 'lr_scheduler': {
                    'scheduler': torch.optim.lr_scheduler.StepLR(opt, 1), 'interval': 'hourly'}}
            if result == 'frequency-mix':
                return [{'optimizer': opt, 'frequency': 2}, {'optimizer': opt}]
            return result

    with pytest.raises(MisconfigurationException, match=re.escape(text)):
        Trainer(**quiet()).fit(Bad())


def test_frequencies_with_accumulation_are_refused(quiet):
    with pytest.raises(MisconfigurationException, match='frequencies.*accumulate_grad_batches'):
        Trainer(**quiet(accumulate_grad_batches=2)).fit(GAN())


def test_step_scheduler_sigkill_then_resume_is_bit_exact(tmp_path_factory, tmp_path):
    import signal
    from test_resume import assert_same_run, rows
    from test_resume_workers import run
    full = tmp_path_factory.mktemp('full_step_sched')
    run(full, full / 'out.pt', '--step-scheduler')
    reference = torch.load(full / 'out.pt'), rows(full / 'lightning_logs' / 'version_0')
    out = tmp_path / 'out.pt'
    run(tmp_path, out, '--step-scheduler', '--kill-at', 19, expect=-signal.SIGKILL)
    run(tmp_path, out, '--step-scheduler', '--resume', tmp_path / 'ckpt' / 'last.ckpt')
    assert_same_run(torch.load(out), reference, tmp_path / 'lightning_logs' / 'version_0')

"""Trains a small model that touches every source of nondeterminism the resume must restore
(shuffling loader, dropout, numpy and python RNG, accumulation, LR scheduler, early stopping,
mid-epoch validation). Run by tests/test_resume.py in a subprocess, which it may SIGKILL.

usage: resume_script.py SAVE_DIR OUT_FILE [--kill-at N] [--kill-in step|save|usr1|<WRITES>]
                        [--resume PATH] [--num-workers N] [--persistent-workers] [--val-loaders N]
"""
import argparse
import os
import random
import signal
import sys

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pytorch_lightning import RootModule, Trainer  # noqa: E402
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint  # noqa: E402


class Noisy(RootModule):
    def __init__(self, hparams):
        super().__init__(hparams)
        self.net = nn.Sequential(nn.Linear(32, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 2))
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(88, 32, generator=gen)
        self.y = (self.x[:, 0] > 0).long()

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        if self.trainer.state.total_batches == self.hparams.kill_at:
            if self.hparams.kill_in == 'step':
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.hparams.kill_in == 'usr1':  # what SLURM sends before the time limit
                os.kill(os.getpid(), signal.SIGUSR1)
        x = x + float(np.random.randn()) * 0.01 + random.random() * 0.01
        loss = nn.functional.cross_entropy(self.net(x), y)
        return {'loss': loss, 'prog': {'batch_loss': loss}}

    def validation_step(self, data_batch, batch_nb, dataloader_i=0):
        x, y = data_batch
        return nn.functional.cross_entropy(self.net(x), y), {}

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.02)
        if self.hparams.step_scheduler:  # a OneCycle-style schedule, stepped every optimizer step
            return {'optimizer': opt, 'lr_scheduler': {
                'scheduler': torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05,
                                                                 total_steps=20),
                'interval': 'step'}}
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]

    @property
    def tng_dataloader(self):  # 11 shuffled batches per epoch
        workers = self.hparams.num_workers
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8, shuffle=True,
                          num_workers=workers,
                          persistent_workers=workers > 0 and self.hparams.persistent_workers)

    @property
    def val_dataloader(self):
        first = DataLoader(TensorDataset(self.x[:24], self.y[:24]), batch_size=8)
        if self.hparams.val_loaders == 1:
            return first
        # more loaders: other slices of the data, the second one shuffled (it draws from the
        # global RNG at each validation run, which a resume must replay exactly)
        return [first] + [DataLoader(TensorDataset(self.x[8 * i:8 * i + 40],
                                                   self.y[8 * i:8 * i + 40]),
                                     batch_size=8, shuffle=True)
                          for i in range(1, self.hparams.val_loaders)]


class KillDuringSave(ModelCheckpoint):
    def on_save_point(self, trainer, module):
        if trainer.state.total_batches == module.hparams.kill_at:
            import pytorch_lightning.checkpoint_io as io
            real = io.torch.save

            def slow_save(obj, f, *args, **kwargs):
                real(obj, f, *args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)  # dies after writing the temp file
            io.torch.save = slow_save
        super().on_save_point(trainer, module)


WRITES = ('torch_save', 'to_csv', 'fsync', 'replace', 'move')


def kill_at_nth_write(kind, n):
    """SIGKILL at the ``n``-th call of one file-system step of a checkpoint or log write
    (``kind``, one of ``WRITES``), on whichever thread makes it (training thread, checkpoint
    finisher, log writer): a checkpoint's ``torch.save`` or test-tube's CSV write is cut to
    half its length first (a torn write); an fsync, rename or (test-tube's) move is never
    made."""
    import shutil
    import pandas
    import pytorch_lightning.checkpoint_io as io
    calls = [0]

    def step(real, name, torn):
        if name != kind:
            return real

        def wrapper(*args, **kwargs):
            if torn and not os.fspath(args[1]).endswith('.tmp'):
                return real(*args, **kwargs)  # not a checkpoint or log write (the OUT_FILE)
            calls[0] += 1
            if calls[0] == n and not torn:
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if calls[0] == n:
                path = args[1]  # torch.save(obj, path) / DataFrame.to_csv(self, path)
                os.truncate(path, os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapper
    io.torch.save = step(torch.save, 'torch_save', torn=True)
    pandas.DataFrame.to_csv = step(pandas.DataFrame.to_csv, 'to_csv', torn=True)
    os.fsync = step(os.fsync, 'fsync', torn=False)
    os.replace = step(os.replace, 'replace', torn=False)
    shutil.move = step(shutil.move, 'move', torn=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('save_dir')
    parser.add_argument('out')
    parser.add_argument('--kill-at', dest='kill_at', type=int, default=-1)
    parser.add_argument('--kill-in', dest='kill_in', default='step')
    parser.add_argument('--resume', default=None)
    parser.add_argument('--num-workers', dest='num_workers', type=int, default=0)
    parser.add_argument('--persistent-workers', dest='persistent_workers', action='store_true')
    parser.add_argument('--val-loaders', dest='val_loaders', type=int, default=1)
    parser.add_argument('--amp', default=None, help="amp_dtype on the CPU: 'bfloat16' or 'float16'")
    parser.add_argument('--step-scheduler', dest='step_scheduler', action='store_true')
    args = parser.parse_args()
    if args.kill_in in WRITES:
        kill_at_nth_write(args.kill_in, args.kill_at)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    model = Noisy(args)
    ckpt_cls = KillDuringSave if args.kill_in == 'save' else ModelCheckpoint
    trainer = Trainer(
        default_save_path=args.save_dir, max_nb_epochs=4, accumulate_grad_batches=3,
        val_check_interval=0.5, nb_sanity_val_steps=1, progress_bar=False,
        print_weights_summary=False, add_log_row_interval=2, log_save_interval=5,
        checkpoint_callback=ckpt_cls(os.path.join(args.save_dir, 'ckpt'), every_n_steps=1),
        early_stop_callback=EarlyStopping(patience=2, min_delta=0.05),
        resume_from_checkpoint=args.resume, use_amp=args.amp is not None, amp_dtype=args.amp)
    trainer.fit(model)
    torch.save({'params': model.state_dict(), 'global_step': trainer.global_step,
                'epoch': trainer.current_epoch, 'version': trainer.logger.version,
                'es_wait': trainer.early_stop_callback.wait}, args.out)


if __name__ == '__main__':
    main()

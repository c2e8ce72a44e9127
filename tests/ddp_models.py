"""Models and a script for the multi-process (DDP) tests: linear regression on fixed data,
with switches that make one rank fail, stop or send itself a signal at a chosen batch.

Run as a script (under torchrun, or with SLURM variables set) it trains one run and writes
``weights_rank<r>.pt`` per rank and ``result.json`` (rank 0) into the output folder."""
import argparse
import json
import os
import signal
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pytorch_lightning import RootModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint


def regression_data(n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = x @ torch.linspace(-1, 1, 8).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x, y)


def kill_job():
    """SIGKILL to this rank's parent (the launching process) and all its other children."""
    parent = os.getppid()
    for pid in os.listdir('/proc'):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f'/proc/{pid}/stat') as file:
                    ppid = int(file.read().rsplit(')', 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent:
                os.kill(int(pid), signal.SIGKILL)
    os.kill(parent, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class Boom(ValueError):
    """Raised by a rank on purpose."""


class Regression(RootModule):
    """8 -> 1 linear regression, SGD. ``validation_end`` weighs each batch by its size and
    counts the samples, so metrics can be compared exactly with one process.

    ``noise``: random noise on the inputs, drawn from each rank's global RNG (and a
    rank-dependent number of extra draws), so an exact resume needs every rank's own state.

    ``event``: ``(rank, global batch count, what)`` with ``what`` one of ``'raise'``,
    ``'exit'`` (``os._exit(3)``), ``'kill'`` (SIGKILL), ``'nan'`` (a NaN loss), ``'stop'``
    (``trainer.state.should_stop`` on that rank only), ``'usr1'`` (SIGUSR1 to itself),
    ``'usr1parent'`` (SIGUSR1 to the process that spawned the ranks), ``'killgroup'`` (SIGKILL
    to the whole job, once the pending checkpoint is written)."""

    def __init__(self, n_train=128, n_val=131, batch_size=16, shuffle=False, lr=0.1,
                 event=None, val_batch_size=None, optimizers=1, workers=0, noise=False):
        super().__init__()
        self.layer = nn.Linear(8, 1)
        self.second = nn.Linear(8, 1) if optimizers == 2 else None
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.shuffle, self.lr, self.event = shuffle, lr, event
        self.nb_optimizers, self.workers, self.noise = optimizers, workers, noise

    def forward(self, x):
        return self.layer(x)

    def _event(self):
        if self.event is None:
            return None
        rank, at, what = self.event
        trainer = self.trainer
        if trainer.global_rank != rank or trainer.state.total_batches != at:
            return None
        if what == 'raise':
            raise Boom(f'rank {rank} failed on purpose at batch {at}')
        if what == 'exit':
            os._exit(3)
        if what == 'kill':
            os.kill(os.getpid(), signal.SIGKILL)
        if what == 'stop':
            trainer.state.should_stop = True
        if what == 'usr1':
            os.kill(os.getpid(), signal.SIGUSR1)
        if what == 'usr1parent':  # SLURM signals the batch script; fit passes it on
            os.kill(os.getppid(), signal.SIGUSR1)
        if what == 'killgroup':  # like scancel --signal=KILL: the launcher and every rank
            from pytorch_lightning import checkpoint_io
            checkpoint_io.wait_for_saves()  # the checkpoint of the last save point is in place
            kill_job()
        return what

    def training_step(self, batch, batch_nb, optimizer_i=0):
        x, y = batch
        if self.noise:  # each rank draws a different amount: their random states differ
            torch.randn(self.trainer.global_rank + 1)
            x = x + 0.1 * torch.randn_like(x)
        layer = self.layer if optimizer_i == 0 else self.second
        loss = nn.functional.mse_loss(layer(x), y)
        if self._event() == 'nan':
            loss = loss * float('nan')
        return loss

    def validation_step(self, batch, batch_nb):
        x, y = batch
        return {'val_loss': nn.functional.mse_loss(self(x), y), 'count': len(x)}

    def validation_end(self, outputs):
        total = sum(out['count'] for out in outputs)
        loss = sum(out['val_loss'] * out['count'] for out in outputs) / total
        return {'val_loss': loss, 'val_count': total}

    test_step = validation_step

    def test_end(self, outputs):
        metrics = self.validation_end(outputs)
        return {'test_loss': metrics['val_loss'], 'test_count': metrics['val_count']}

    def configure_optimizers(self):
        first = torch.optim.SGD(self.layer.parameters(), lr=self.lr)
        if self.nb_optimizers == 1:
            return first
        return [first, torch.optim.SGD(self.second.parameters(), lr=self.lr)]

    def tng_dataloader(self):
        return DataLoader(regression_data(self.n_train, 0), batch_size=self.batch_size,
                          shuffle=self.shuffle, num_workers=self.workers,
                          persistent_workers=self.workers > 0)

    def val_dataloader(self):
        return DataLoader(regression_data(self.n_val, 1), batch_size=self.val_batch_size)

    def test_dataloader(self):
        return DataLoader(regression_data(self.n_val, 2), batch_size=self.val_batch_size)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument('out')
    parser.add_argument('--procs', type=int, default=2)
    parser.add_argument('--nodes', type=int, default=1)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--shuffle', action='store_true')
    parser.add_argument('--inject', default=None, help='rank,batch,what: see Regression')
    parser.add_argument('--every-n-steps', type=int, default=None)
    parser.add_argument('--resume', default=None)
    parser.add_argument('--test', action='store_true')
    parser.add_argument('--workers', type=int, default=0)
    parser.add_argument('--noise', action='store_true')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    event = None
    if args.inject:
        rank, at, what = args.inject.split(',')
        event = (int(rank), int(at), what)
    model = Regression(batch_size=args.batch_size, shuffle=args.shuffle, event=event,
                       workers=args.workers, noise=args.noise)
    callbacks = {}
    if args.every_n_steps:
        callbacks['checkpoint_callback'] = ModelCheckpoint(
            os.path.join(args.out, 'ckpt'), every_n_steps=args.every_n_steps)
    trainer = Trainer(distributed_backend='ddp', num_processes=args.procs,
                      nb_gpu_nodes=args.nodes, max_nb_epochs=args.epochs,
                      default_save_path=args.out, progress_bar=False, nb_sanity_val_steps=0,
                      print_weights_summary=False, resume_from_checkpoint=args.resume,
                      process_group_timeout=60, **callbacks)
    trainer.fit(model)
    result = {'rank': trainer.global_rank, 'world_size': trainer.world_size,
              'epoch': trainer.current_epoch, 'global_step': trainer.global_step,
              'val_loss': float(trainer.callback_metrics['val_loss']),
              'val_count': int(trainer.callback_metrics['val_count']),
              'version': trainer.logger.version}
    if args.test:
        metrics = trainer.test()
        result['test_count'] = int(metrics['test_count'])
    torch.save(model.state_dict(), os.path.join(args.out, f'weights_rank{trainer.global_rank}.pt'))
    if trainer.is_global_zero:
        with open(os.path.join(args.out, 'result.json'), 'w') as file:
            json.dump(result, file)


if __name__ == '__main__':
    sys.exit(main())

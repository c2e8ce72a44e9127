#!/usr/bin/env python
"""Where the one batch path's per-step cost over a hand loop goes (tiny MLP of loop_overhead's
variant b, checkpoints and early stopping off so only the loop is left).

Four loops over the same data, alternating, in one process (microseconds per step, median
and min over the rounds):

  hand               loop_overhead.hand_loop: forward, backward, step, zero_grad
  trainer            Trainer.fit as it is
  closure_train_on   Trainer.fit with its batch method replaced by the bare minimum that
                     still runs forward and backward inside optimizer.step(closure)
  minimal_train_on   the same, without the closure: forward, backward, step

So trainer - closure_train_on is the batch path's own Python (the closure object, the device
and precision parts, the loss check, the hook lists, the counters); closure_train_on -
minimal_train_on is the cost of running forward and backward inside torch's Optimizer.step
(its profiler scope and grad-mode switches); minimal_train_on - hand is the epoch loop
around the batches (the resumable sampler, the hooks, the decision points) and the fit's
fixed cost. The replacements are for measuring only; they skip everything else the batch
path does.

Run: ``python benchmarks/batch_path_cost.py [--rounds N]``.
"""
import argparse
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loop_overhead as lo  # noqa: E402  (puts the repository on sys.path)

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning import trainer as trainer_module  # noqa: E402


def minimal_train_on(self, batch, batch_idx):
    optimizer = self.optimizers[0]
    loss = self.module.training_step(batch, batch_idx)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    self.last_loss = loss
    self.state.global_step += 1


def closure_train_on(self, batch, batch_idx):
    optimizer = self.optimizers[0]

    def closure():
        loss = self.module.training_step(batch, batch_idx)
        loss.backward()
        self.last_loss = loss
        return loss
    optimizer.step(closure)
    optimizer.zero_grad()
    self.state.global_step += 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=7)
    args = parser.parse_args(argv)
    cfg = dict(lo.VARIANTS['b'])
    data = lo.make_data(cfg)
    real = trainer_module.Trainer._train_on
    loops = {'hand': None, 'trainer': real, 'closure_train_on': closure_train_on,
             'minimal_train_on': minimal_train_on}
    us = {name: [] for name in loops}
    with tempfile.TemporaryDirectory(prefix='pl_bench_') as save_dir, \
            open(os.devnull, 'w') as sink:
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for name, train_on in loops.items():
                model = lo.make_model(cfg, data)
                if train_on is None:
                    work = lambda: lo.hand_loop(model)  # noqa: E731
                else:
                    trainer_module.Trainer._train_on = train_on
                    trainer = pl.Trainer(default_save_path=save_dir, max_nb_epochs=1,
                                         nb_sanity_val_steps=0, checkpoint_callback=False,
                                         early_stop_callback=False, **cfg['trainer'])
                    work = lambda: trainer.fit(model)  # noqa: E731
                gc.collect()
                try:
                    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                        start = time.perf_counter()
                        work()
                        elapsed = time.perf_counter() - start
                finally:
                    trainer_module.Trainer._train_on = real
                if rnd:
                    us[name].append(elapsed / cfg['steps'] * 1e6)
    med = {name: statistics.median(values) for name, values in us.items()}
    print(f"tiny MLP, {cfg['steps']} steps, {args.rounds} rounds (load average "
          f"{os.getloadavg()[0]:.2f}); us/step median (min)")
    for name, values in us.items():
        print(f"  {name:18}{med[name]:8.1f} ({min(values):6.1f})")
    print(f"  the batch path's own Python     {med['trainer'] - med['closure_train_on']:+6.1f}")
    print(f"  forward/backward inside step()  {med['closure_train_on'] - med['minimal_train_on']:+6.1f}")
    print(f"  the epoch loop and fixed costs  {med['minimal_train_on'] - med['hand']:+6.1f}")


if __name__ == '__main__':
    main()

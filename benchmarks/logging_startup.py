#!/usr/bin/env python
"""The fixed cost of logging: what default test-tube logging adds to one short run.

Run from the repository root::

    python benchmarks/logging_startup.py             # 7 rounds
    python benchmarks/logging_startup.py --rounds 3

Each round starts two fresh interpreters, one after the other (alternating which goes
first): the same tiny script (a 32->2 linear model, 640 samples, batch 32, 3 epochs = 60
training steps, validation every epoch, defaults otherwise with the bar and the weights
summary off), once with default logging (``experiment=None``) and once with
``experiment=False``. Two figures per run: the whole process (``python script.py`` from
start to exit, as a sweep or a test pays it) and ``fit`` alone (timed inside the script).

The figure judged is the median over rounds of the *paired* difference (logging on - off, same
round) of the whole-process time; target <= +0.6 s. Quartiles are in brackets.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_S = 0.6

SCRIPT = textwrap.dedent("""
    import sys, tempfile, time
    sys.path.insert(0, {repo!r})
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from pytorch_lightning import RootModule, Trainer

    class Tiny(RootModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(32, 2)
            x = torch.randn(640, 32, generator=torch.Generator().manual_seed(0))
            self.data = TensorDataset(x, (x[:, 0] > 0).long())

        def training_step(self, data_batch, batch_nb):
            x, y = data_batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            return loss, {{'train_loss': loss}}

        def validation_step(self, data_batch, batch_nb):
            x, y = data_batch
            out = self.net(x)
            return (nn.functional.cross_entropy(out, y),
                    {{'val_acc': (out.argmax(1) == y).float().mean()}})

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

        @property
        def tng_dataloader(self):
            return DataLoader(self.data, batch_size=32, shuffle=True)

        @property
        def val_dataloader(self):
            return DataLoader(self.data, batch_size=128)

    kwargs = dict(max_nb_epochs=3, default_save_path=sys.argv[2], progress_bar=False,
                  print_weights_summary=False)
    if sys.argv[1] == 'off':
        kwargs['experiment'] = False
    start = time.perf_counter()
    Trainer(**kwargs).fit(Tiny())
    print('FIT', time.perf_counter() - start)
""")


def run(mode, script, save_dir):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, script, mode, save_dir], capture_output=True,
                          text=True, timeout=300)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f'the {mode} run failed:\n{proc.stdout}\n{proc.stderr}')
    fit = float(proc.stdout.split('FIT')[-1])
    return total, fit


def summary(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return f'{statistics.median(values):+.3f} s [{q[0]:+.3f} .. {q[2]:+.3f}]'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, 'short_run.py')
        with open(script, 'w') as f:
            f.write(SCRIPT.format(repo=REPO))
        run('off', script, os.path.join(tmp, 'warmup'))  # file caches warm for both sides
        results = {'on': [], 'off': []}
        print(f'load average {os.getloadavg()[0]:.2f}; {args.rounds} rounds', flush=True)
        for i in range(args.rounds):
            order = ('on', 'off') if i % 2 == 0 else ('off', 'on')
            for mode in order:
                results[mode].append(run(mode, script, os.path.join(tmp, f'r{i}{mode}')))
            on, off = results['on'][-1], results['off'][-1]
            print(f'round {i}: process {on[0]:.2f} vs {off[0]:.2f} s, fit {on[1]:.2f} vs '
                  f'{off[1]:.2f} s (logging on vs off)', flush=True)
    process = [on[0] - off[0] for on, off in zip(results['on'], results['off'])]
    fit = [on[1] - off[1] for on, off in zip(results['on'], results['off'])]
    med_on = statistics.median(r[0] for r in results['on'])
    med_off = statistics.median(r[0] for r in results['off'])
    print(f'\nwhole process: logging on {med_on:.2f} s, off {med_off:.2f} s (medians)')
    print(f'added by logging, whole process: {summary(process)}  target <= +{TARGET_S} s')
    print(f'added by logging, fit only:      {summary(fit)}')
    ok = statistics.median(process) <= TARGET_S
    print('target met' if ok else 'target MISSED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())

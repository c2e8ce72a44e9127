#!/usr/bin/env python
"""``Trainer.fit`` on one GPU against a hand-written loop, and host syncs per training step.

Run from the repository root on a machine with CUDA (``scripts/gpu_check.sh`` runs it)::

    python benchmarks/gpu_overhead.py              # 5 rounds per variant
    python benchmarks/gpu_overhead.py --rounds 3

Variants (one epoch, then one validation pass; bar and weights summary on, output to /dev/null;
logging into a temporary folder):
  tiny  MLP 32->32->2, batch 32, 2000 steps: the loop's own cost dominates   target 1.05x
  data  MLP 4096->4096->4096->10, batch 1024, 200 steps: the GPU dominates    target 1.01x

The ratio is the median of per-round paired ratios (trainer / hand, the two runs adjacent).
Host syncs are counted with ``torch.cuda.set_sync_debug_mode('warn')`` over one extra fit
(target <= 0.1 per training step). The hand loop reads nothing back per step either.
"""
import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
from loop_overhead import make_data, make_model  # noqa: E402

VARIANTS = {
    'tiny': dict(dims=(32, 32, 2), batch=32, steps=2000, val_batches=50, target=1.05),
    'data': dict(dims=(4096, 4096, 4096, 10), batch=1024, steps=200, val_batches=20,
                 target=1.01),
}


def hand_loop(model, device):
    model.to(device)
    opt = model.configure_optimizers()
    model.train()
    for x, y in model._train_loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(x.to(device)), y.to(device)) for x, y in model._val_loader]
        value = torch.stack(losses).mean().item()
    model.train()
    return value


def fit(model, save_dir):
    trainer = pl.Trainer(default_save_path=save_dir, gpus=1, max_nb_epochs=1,
                         nb_sanity_val_steps=0)
    trainer.fit(model)
    return trainer


def timed(work):
    with open(os.devnull, 'w') as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        torch.cuda.synchronize()
        return time.perf_counter() - start


def count_syncs(cfg, data, save_dir):
    model = make_model(cfg, data)
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            with open(os.devnull, 'w') as sink, contextlib.redirect_stderr(sink):
                trainer = fit(model, save_dir)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = sum('synchroniz' in str(w.message) for w in caught)
    return syncs / trainer.nb_training_batches


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print('no CUDA here: nothing to measure')
        return 0
    device = torch.device('cuda', 0)
    print(f'{torch.cuda.get_device_name(0)}, torch {torch.__version__}')
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in VARIANTS.items():
            data = make_data(cfg)
            ratios = []
            for rnd in range(args.rounds + 1):
                sides = ('hand', 'trainer') if rnd % 2 == 0 else ('trainer', 'hand')
                got = {}
                for side in sides:
                    model = make_model(cfg, data)
                    got[side] = timed(lambda: hand_loop(model, device) if side == 'hand'
                                      else fit(model, tmp))
                if rnd:  # round 0 warms up
                    ratios.append(got['trainer'] / got['hand'])
                    print(f'[{name}] round {rnd}: hand {got["hand"] / cfg["steps"] * 1e6:.1f} '
                          f'us/step, trainer {got["trainer"] / cfg["steps"] * 1e6:.1f} us/step, '
                          f'ratio {ratios[-1]:.3f}', flush=True)
            syncs = count_syncs(cfg, data, tmp)
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            ratio = statistics.median(ratios)
            ok = ratio <= cfg['target'] and syncs <= 0.1
            failed |= not ok
            print(f'[{name}] ratio {ratio:.3f} [{q[0]:.3f}-{q[2]:.3f}] (target '
                  f'{cfg["target"]}), host syncs {syncs:.3f}/step (target 0.1): '
                  f'{"PASS" if ok else "FAIL"}', flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

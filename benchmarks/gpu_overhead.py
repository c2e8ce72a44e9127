#!/usr/bin/env python
"""``Trainer.fit`` on one GPU against a hand-written loop, and host syncs per training step.

Run from the repository root on a machine with CUDA (``scripts/gpu_check.sh`` runs it)::

    python benchmarks/gpu_overhead.py              # 1 warm-up + 5 timed rounds per variant
    python benchmarks/gpu_overhead.py --rounds 2

Variants (one epoch, then one validation pass; bar and weights summary on, output to
/dev/null; test-tube logging into a temporary folder when test-tube is installed, else no
logger, which the output says; no checkpoints or early stopping, as loop_overhead.py's
variants d and e: the hand loop writes none):
  tiny  MLP 32->32->2, batch 32, 2000 steps: the loop's own cost dominates   target 1.05x
  data  MLP 4096->4096->4096->10, batch 1024, 200 steps: the GPU and the
        loader dominate                                                       target 1.01x

The ratio is the median of per-round paired ratios (trainer / hand, the two runs adjacent).
Host syncs are counted with ``torch.cuda.set_sync_debug_mode('warn')`` over one extra fit,
attributed per training batch (``tests/host_syncs.py``): "in training" counts the syncs from
the first batch's start to the last one's, per step (target <= 0.1); "not asked for" counts
those that were not one of the trainer's reads (a log row, a bar redraw, the NaN-flag check),
target 0. The whole fit (setup, validation, teardown) is printed too. The hand loop reads
nothing back per step either. Exit status 1 when a target is missed.
"""
import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests'))  # host_syncs: the tests' counting rule

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
from host_syncs import ReadsPerBatch, cuda_sync_warnings  # noqa: E402
from loop_overhead import make_data, make_model  # noqa: E402

VARIANTS = {
    'tiny': dict(dims=(32, 32, 2), batch=32, steps=2000, val_batches=50, target=1.05),
    'data': dict(dims=(4096, 4096, 4096, 10), batch=1024, steps=200, val_batches=20,
                 target=1.01),
}
SYNC_TARGET = 0.1
HAS_TEST_TUBE = importlib.util.find_spec('test_tube') is not None


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


def fit(model, save_dir, callbacks=()):
    trainer = pl.Trainer(default_save_path=save_dir, gpus=1, max_nb_epochs=1,
                         nb_sanity_val_steps=0, checkpoint_callback=False,
                         early_stop_callback=False, experiment=None if HAS_TEST_TUBE else False,
                         callbacks=list(callbacks))
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
    """``(whole fit, in training, trainer reads, not asked for)``, per training step."""
    model = make_model(cfg, data)
    windows = ReadsPerBatch(count=None)
    with cuda_sync_warnings() as count, open(os.devnull, 'w') as sink, \
            contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        windows.count = count
        trainer = fit(model, save_dir, [windows])
        whole = count()
    got = windows.windows()
    steps = trainer.nb_training_batches
    in_training = sum(syncs for syncs, _ in got)
    reads = sum(reads for _, reads in got)
    not_asked = sum(max(0, syncs - reads) for syncs, reads in got)
    return whole / steps, in_training / len(got), reads / len(got), not_asked / len(got)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print('no CUDA here: nothing to measure')
        return 0
    device = torch.device('cuda', 0)
    print(f'{torch.cuda.get_device_name(0)}, torch {torch.__version__}, '
          f'{"test-tube logging" if HAS_TEST_TUBE else "NO LOGGER (test-tube is not installed)"}'
          f', {args.rounds} rounds after a warm-up', flush=True)
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
            whole, in_training, reads, not_asked = count_syncs(cfg, data, tmp)
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            ratio = statistics.median(ratios)
            ok = ratio <= cfg['target'] and in_training <= SYNC_TARGET and not_asked == 0
            failed |= not ok
            print(f'[{name}] ratio {ratio:.3f} [{q[0]:.3f}-{q[2]:.3f}] (target {cfg["target"]}); '
                  f'host syncs per step: {in_training:.3f} in training (target {SYNC_TARGET}; '
                  f'trainer reads {reads:.3f}: log rows, bar redraws, flag checks), '
                  f'{not_asked:.3f} not asked for (target 0), {whole:.3f} over the whole fit: '
                  f'{"PASS" if ok else "FAIL"}', flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python
"""How much does ``Trainer.fit`` cost over the loop a researcher writes by hand?

Run from the repository root::

    python benchmarks/loop_overhead.py             # 1 warm-up round + 5 timed rounds
    python benchmarks/loop_overhead.py --quick     # 1 warm-up round + 2 timed rounds
    python benchmarks/loop_overhead.py --only a    # one variant (a, b, c) or 'import'

Everything runs in ONE process. Each round runs the hand-written loop and ``Trainer.fit``
once per variant, alternating which side goes first, on a fresh model, optimizer, DataLoader
and Trainer seeded identically. Only the hand loop itself / the ``fit`` call is timed
(``time.perf_counter``); the figure is that time divided by the number of training steps
(so it includes the end-of-epoch validation pass and the Trainer's per-fit setup/teardown).

Both sides do the same work: same model class, same TensorDataset/DataLoader (shuffled with
a seeded generator), Adam, one epoch, then one validation pass at the end of the epoch.
The Trainer runs with ``nb_sanity_val_steps=0`` because the hand loop has no sanity check.

Variants:
  a  tiny MLP 32->32->2, batch 32, 2000 steps, Trainer defaults (progress bar, test-tube
     logging into a temp dir, weights summary; their output goes to /dev/null)  target 1.05x
  b  the same with progress_bar=False, experiment=False, print_weights_summary=False
                                                                                target 1.02x
  c  compute-bound MLP 512->2048->2048->10, batch 256, 200 steps, defaults      target 1.01x
  d  as a, e as c, with checkpoint_callback=False, early_stop_callback=False (the defaults
     of the core issue, before checkpointing and early stopping were on by default)
  f  as b with bfloat16 autocast on the CPU (use_amp=True), against a hand loop that
     autocasts the same way                                                     target 1.05x
  aa the control: the hand loop against itself (same model as a). Its ratio shows what this
     machine's noise alone does to a ratio; a target closer to 1 than that cannot be told
     apart from noise in one run.

The ratio compared with the target is the median, over rounds, of the *paired* ratio
(trainer time / hand time of the same round; the two runs are adjacent in time, so slow
phases of a shared machine hit both). The table also gives the quartiles of the paired
ratios and the ratio of the fastest runs (min / min).

Plus the cost of ``import pytorch_lightning`` after ``import torch`` in fresh interpreters
(target <= 0.1 s), and a check that it does not import test_tube.
"""
import argparse
import contextlib
import gc
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import pytorch_lightning as pl  # noqa: E402

SEED = 1234
IMPORT_TARGET_S = 0.1

VARIANTS = {
    'a': dict(title='tiny MLP, Trainer defaults', dims=(32, 32, 2), batch=32, steps=2000,
              val_batches=50, target=1.05, trainer={}),
    'b': dict(title='tiny MLP, bar/logging/summary off', dims=(32, 32, 2), batch=32,
              steps=2000, val_batches=50, target=1.02,
              trainer=dict(progress_bar=False, experiment=False, print_weights_summary=False)),
    'c': dict(title='compute-bound MLP, Trainer defaults', dims=(512, 2048, 2048, 10),
              batch=256, steps=200, val_batches=20, target=1.01, trainer={}),
    # the core issue's defaults (bar + logging) without the checkpointing and early stopping
    # that later became defaults too
    'd': dict(title='tiny MLP, bar + logging (no checkpoints/early stop)', dims=(32, 32, 2),
              batch=32, steps=2000, val_batches=50, target=1.05,
              trainer=dict(checkpoint_callback=False, early_stop_callback=False)),
    'e': dict(title='compute-bound MLP, bar + logging (no checkpoints/early stop)',
              dims=(512, 2048, 2048, 10), batch=256, steps=200, val_batches=20, target=1.01,
              trainer=dict(checkpoint_callback=False, early_stop_callback=False)),
    # bfloat16 autocast on the CPU, against a hand loop that autocasts the same way
    'f': dict(title='tiny MLP, bfloat16 autocast, bar/logging/summary off', dims=(32, 32, 2),
              batch=32, steps=2000, val_batches=50, target=1.05, amp=torch.bfloat16,
              trainer=dict(progress_bar=False, experiment=False, print_weights_summary=False,
                           use_amp=True, amp_dtype='bfloat16')),
    # the control: both sides run the hand loop (trainer=None)
    'aa': dict(title='control: hand loop vs hand loop (noise floor)', dims=(32, 32, 2),
               batch=32, steps=2000, val_batches=50, target=None, trainer=None),
}


# ---------------------------------------------------------------------------- the work
def mlp(dims):
    """``nn.Sequential`` of Linear layers through ``dims``, ReLU between them (shared by the
    benchmark scripts)."""
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLP(pl.RootModule):
    """Linear/ReLU stack. The training step returns the bare loss (no extra metrics), so the
    Trainer has exactly the work of the hand loop plus its own bookkeeping."""

    def __init__(self, dims, train_loader, val_loader, lr=1e-3):
        super().__init__()
        self.net = mlp(dims)
        self._train_loader, self._val_loader, self.lr = train_loader, val_loader, lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, data_batch, batch_nb):
        x, y = data_batch
        return {'val_loss': F.cross_entropy(self(x), y)}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    @property
    def tng_dataloader(self):
        return self._train_loader

    @property
    def val_dataloader(self):
        return self._val_loader


def make_data(cfg):
    gen = torch.Generator().manual_seed(SEED)
    d_in, d_out = cfg['dims'][0], cfg['dims'][-1]
    n_train, n_val = cfg['steps'] * cfg['batch'], cfg['val_batches'] * cfg['batch']
    x = torch.randn(n_train + n_val, d_in, generator=gen)
    y = torch.randint(0, d_out, (n_train + n_val,), generator=gen)
    return (TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:]))


def make_model(cfg, data):
    """A fresh, identically seeded model holding fresh, identically seeded loaders."""
    train_set, val_set = data
    train_loader = DataLoader(train_set, batch_size=cfg['batch'], shuffle=True,
                              generator=torch.Generator().manual_seed(SEED))
    val_loader = DataLoader(val_set, batch_size=cfg['batch'])
    torch.manual_seed(SEED)
    return MLP(cfg['dims'], train_loader, val_loader)


def hand_loop(model, amp=None):
    """What a researcher writes. Timed from optimizer creation on, like fit(). ``amp``: the
    autocast dtype (CPU), as a researcher would add it."""
    train_loader, val_loader = model._train_loader, model._val_loader
    opt = model.configure_optimizers()
    cast = (lambda: torch.autocast('cpu', dtype=amp)) if amp else contextlib.nullcontext
    model.train()
    for x, y in train_loader:
        with cast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad(), cast():
        val_losses = [F.cross_entropy(model(x), y) for x, y in val_loader]
        val_loss = torch.stack(val_losses).float().mean()
    model.train()
    return val_loss.item()


def run_once(side, cfg, data, save_dir, sink):
    """One timed run; returns (seconds, model)."""
    model = make_model(cfg, data)
    if side == 'trainer' and cfg['trainer'] is not None:
        kwargs = dict(default_save_path=save_dir, max_nb_epochs=1, nb_sanity_val_steps=0)
        kwargs.update(cfg['trainer'])
        trainer = pl.Trainer(**kwargs)
        work = lambda: trainer.fit(model)  # noqa: E731
    else:
        work = lambda: hand_loop(model, cfg.get('amp'))  # noqa: E731
    gc.collect()
    # the bar (tqdm -> stderr) and the weights summary (stdout) stay on, but go to /dev/null;
    # the hand loop runs under the same redirection
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        start = time.perf_counter()
        work()
        elapsed = time.perf_counter() - start
    return elapsed, model


def max_param_diff(m1, m2):
    return max((a - b).abs().max().item() for a, b in zip(m1.parameters(), m2.parameters()))


def bench_variant(name, rounds, save_dir, sink):
    cfg = VARIANTS[name]
    data = make_data(cfg)
    steps = cfg['steps']
    target = 'none' if cfg['target'] is None else f"<= {cfg['target']:.2f}x"
    print(f"\n[{name}] {cfg['title']}: dims {'->'.join(map(str, cfg['dims']))}, batch "
          f"{cfg['batch']}, {steps} steps + {cfg['val_batches']} val batches, target "
          f"{target} (load average {os.getloadavg()[0]:.2f})", flush=True)
    times = {'hand': [], 'trainer': []}
    paired = []
    for rnd in range(rounds + 1):  # round 0 is the warm-up
        order = ('hand', 'trainer') if rnd % 2 == 0 else ('trainer', 'hand')
        got, models = {}, {}
        for side in order:
            got[side], models[side] = run_once(side, cfg, data, save_dir, sink)
        if rnd == 0:
            diff = max_param_diff(models['hand'], models['trainer'])
            print(f"  warm-up  hand {got['hand'] / steps * 1e6:8.1f} us/step   trainer "
                  f"{got['trainer'] / steps * 1e6:8.1f} us/step   (final weights max |diff| "
                  f"hand vs trainer: {diff:.2e})", flush=True)
            continue
        for side in order:
            times[side].append(got[side])
        paired.append(got['trainer'] / got['hand'])
        print(f"  round {rnd}  hand {got['hand'] / steps * 1e6:8.1f} us/step   trainer "
              f"{got['trainer'] / steps * 1e6:8.1f} us/step   ratio "
              f"{got['trainer'] / got['hand']:.3f}", flush=True)
    us = {side: [t / steps * 1e6 for t in ts] for side, ts in times.items()}
    hand_med, trn_med = statistics.median(us['hand']), statistics.median(us['trainer'])
    hand_min, trn_min = min(us['hand']), min(us['trainer'])
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    return dict(name=name, hand_med=hand_med, hand_min=hand_min, trn_med=trn_med,
                trn_min=trn_min, r_med=statistics.median(paired), r_min=trn_min / hand_min,
                r_q1=quartiles[0], r_q3=quartiles[2], target=cfg['target'])


# ---------------------------------------------------------------------------- import cost
_IMPORT_PROBE = (
    "import sys, time\n"
    "t0 = time.perf_counter(); import torch; t1 = time.perf_counter()\n"
    "tq = 'tqdm' in sys.modules\n"
    "import pytorch_lightning; t2 = time.perf_counter()\n"
    "print(t1 - t0, t2 - t1, 'test_tube' in sys.modules, 'tqdm' in sys.modules and not tq)\n"
)


def _python(args, env):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)
    return time.perf_counter() - start, proc


def _importtime_modules(stderr):
    """{module: self us} from ``-X importtime`` output."""
    mods = {}
    for line in stderr.splitlines():
        m = re.match(r'import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)', line)
        if m:
            mods[m.group(4)] = int(m.group(1))
    return mods


def _delta_runs(n, env):
    deltas, tt_loaded, tqdm_loaded = [], False, False
    for _ in range(n):
        _, proc = _python(['-c', _IMPORT_PROBE], env)
        _, delta, tt, tq = proc.stdout.split()
        deltas.append(float(delta))
        tt_loaded |= tt == 'True'
        tqdm_loaded |= tq == 'True'
    return deltas, tt_loaded, tqdm_loaded


def bench_import(n, cache_dir):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
    # with bytecode caching on, caches go to a temporary folder, never into the repository
    cached = dict(env, PYTHONPYCACHEPREFIX=cache_dir)
    cached.pop('PYTHONDONTWRITEBYTECODE', None)
    no_pyc = os.environ.get('PYTHONDONTWRITEBYTECODE')
    print(f"\n[import] fresh interpreters, {n} runs each (alternating)", flush=True)
    walls_torch, walls_both = [], []
    _python(['-c', 'import torch, pytorch_lightning'], env)  # warm the file cache
    _python(['-c', 'import torch, pytorch_lightning'], cached)  # write the bytecode cache
    for i in range(n):
        pair = [('torch', 'import torch'), ('both', 'import torch, pytorch_lightning')]
        for label, code in (pair if i % 2 == 0 else pair[::-1]):
            wall, _ = _python(['-c', code], env)
            (walls_torch if label == 'torch' else walls_both).append(wall)
    deltas, tt_loaded, tqdm_loaded = _delta_runs(n, env)
    deltas_cached, tt2, _ = _delta_runs(n, cached)
    tt_loaded |= tt2
    # which modules `import pytorch_lightning` adds on top of torch, by self time
    _, base = _python(['-X', 'importtime', '-c', 'import torch'], cached)
    _, both = _python(['-X', 'importtime', '-c', 'import torch, pytorch_lightning'], cached)
    base_mods, both_mods = _importtime_modules(base.stderr), _importtime_modules(both.stderr)
    extra = {m: us for m, us in both_mods.items() if m not in base_mods}
    top = sorted(extra.items(), key=lambda kv: -kv[1])[:6]
    res = dict(delta_med=statistics.median(deltas), delta_min=min(deltas),
               cached_med=statistics.median(deltas_cached), cached_min=min(deltas_cached),
               wall_torch=statistics.median(walls_torch), wall_both=statistics.median(walls_both),
               test_tube=tt_loaded, tqdm=tqdm_loaded, extra_us=sum(extra.values()), top=top,
               n_extra=len(extra), no_pyc=bool(no_pyc))
    print(f"  python -c 'import torch'                    median wall {res['wall_torch']:.3f} s")
    print(f"  python -c 'import torch, pytorch_lightning' median wall {res['wall_both']:.3f} s"
          f"  (difference {res['wall_both'] - res['wall_torch']:+.3f} s, noisy)")
    print(f"  import pytorch_lightning after torch, timed in-process: median "
          f"{res['delta_med'] * 1e3:.1f} ms, min {res['delta_min'] * 1e3:.1f} ms"
          + (" (PYTHONDONTWRITEBYTECODE is set here: compiled from source every time)"
             if no_pyc else ""))
    print(f"  the same with a bytecode cache: median {res['cached_med'] * 1e3:.1f} ms, "
          f"min {res['cached_min'] * 1e3:.1f} ms")
    print(f"  -X importtime (cached): {res['n_extra']} modules beyond torch's, self total "
          f"{res['extra_us'] / 1e3:.1f} ms; largest: "
          + ', '.join(f'{m} {us / 1e3:.1f} ms' for m, us in top))
    print(f"  test_tube in sys.modules after import: {tt_loaded}   tqdm imported by "
          f"pytorch_lightning (not already by torch): {tqdm_loaded}")
    return res


# ---------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='2 timed rounds instead of 5')
    parser.add_argument('--rounds', type=int, default=None, help='timed rounds (default 5)')
    parser.add_argument('--only', choices=sorted(VARIANTS) + ['import'], action='append',
                        help='run only this part (repeatable)')
    parser.add_argument('--steps', type=float, default=1.0, metavar='X',
                        help='run X times each variant\'s training steps (default 1): a '
                             'longer fit shows how much of the overhead is per fit, not per '
                             'step')
    parser.add_argument('--threads', type=int, default=None,
                        help="torch.set_num_threads(N) for both sides (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 5)
    for cfg in VARIANTS.values():
        cfg['steps'] = max(1, round(cfg['steps'] * args.steps))
    parts = args.only or sorted(VARIANTS) + ['import']

    print(f"pytorch_lightning {pl.__version__}, torch {torch.__version__}, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()} ({'--threads' if args.threads else 'torch default'}, "
          f"same for both sides), load average {os.getloadavg()[0]:.2f}")
    print(f"1 warm-up round + {rounds} timed rounds per variant, alternating hand/trainer; "
          f"Trainer(nb_sanity_val_steps=0, max_nb_epochs=1): the hand loop has no sanity check")

    results, imp = [], None
    with tempfile.TemporaryDirectory(prefix='pl_bench_') as save_dir, \
            open(os.devnull, 'w') as sink:
        for name in sorted(VARIANTS):
            if name in parts:
                results.append(bench_variant(name, rounds, save_dir, sink))
        if 'import' in parts:
            imp = bench_import(3 if args.quick else 5, os.path.join(save_dir, 'pycache'))

    failed = False
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (timings are only meaningful "
          f"when nothing else runs: with >1 torch thread, any other busy process stalls "
          f"torch's thread pool)")
    if results:
        print("per training step, in microseconds (total timed run / steps; median and min "
              f"over {rounds} rounds). ratio: median of the per-round paired ratios "
              "(trainer / hand of the same round) and their quartiles; min/min: fastest "
              "trainer run / fastest hand run")
        head = (f"{'':3}{'hand med':>10}{'hand min':>10}{'trn med':>10}{'trn min':>10}"
                f"{'ratio':>8}{'quartiles':>15}{'min/min':>9}{'target':>8}  result (ratio / min)")
        print(head)
        print('-' * len(head))
        for r in results:
            line = (f"{r['name']:3}{r['hand_med']:10.1f}{r['hand_min']:10.1f}{r['trn_med']:10.1f}"
                    f"{r['trn_min']:10.1f}{r['r_med']:8.3f}  {r['r_q1']:.3f}-{r['r_q3']:.3f}"
                    f"{r['r_min']:9.3f}")
            if r['target'] is None:
                print(f"{line}       -  control: the noise floor")
                continue
            ok_med, ok_min = r['r_med'] <= r['target'], r['r_min'] <= r['target']
            failed |= not ok_med
            print(f"{line}{r['target']:7.2f}x  {'PASS' if ok_med else 'FAIL'} / "
                  f"{'PASS' if ok_min else 'FAIL'}")
    if imp is not None:
        ok = imp['delta_med'] <= IMPORT_TARGET_S
        failed |= not ok or imp['test_tube']
        print(f"import pytorch_lightning after torch: {imp['delta_med'] * 1e3:.1f} ms median "
              f"({imp['cached_med'] * 1e3:.1f} ms with bytecode cache; target <= "
              f"{IMPORT_TARGET_S * 1e3:.0f} ms) {'PASS' if ok else 'FAIL'}; "
              f"test_tube not imported: {'PASS' if not imp['test_tube'] else 'FAIL'}")
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

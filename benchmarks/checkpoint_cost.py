#!/usr/bin/env python
"""What do checkpoints cost: writing one, and resuming into the middle of an epoch?

Run from the repository root::

    python benchmarks/checkpoint_cost.py            # 5 timed rounds per figure
    python benchmarks/checkpoint_cost.py --quick    # 2 timed rounds, fewer skip counts
    python benchmarks/checkpoint_cost.py --only save --dir /some/disk   # one part, files there

Everything runs in one process; figures are medians and minimums over rounds that alternate
(rotate) the order of the variants being compared.

Part 1, save (``--only save``). An MLP (1M or 25M parameters, Adam) is fitted with
``Trainer(experiment=False, progress_bar=False, print_weights_summary=False,
checkpoint_callback=False, early_stop_callback=False, max_nb_epochs=1)`` on a tiny generated
dataset (3 batches). At the save point after batch 2 (two Adam steps taken, mid-epoch: exactly
where ``ModelCheckpoint(every_n_steps=...)`` writes ``last.ckpt``) a Callback times, per round:

  (a) ``trainer.save_checkpoint(path)``                        what ModelCheckpoint calls:
      the time the training thread is blocked (build + write the temp file; its fsync and
      rename then finish on a background thread, waited for before the next save)
  (f) (a) followed by ``checkpoint_io.wait_for_saves()``       durable under its real name
  (b) ``torch.save({'state_dict': model.state_dict(), 'optimizer': opt.state_dict()}, path)``
      into the same folder (bare: no fsync)
  (c) the same bare dict, ``torch.save`` into an open file + ``flush`` + ``os.fsync``
  and, to split (a) up:
  (d) ``checkpoint_io.dump(trainer, position)`` alone           building the dict (no I/O)
  (e) ``checkpoint_io.atomic_save(<dict from d>, path)``       writing it
  (g) bare dict, ``torch.save`` into ``open(path, 'wb')``, no fsync; the open (which
      truncates, i.e. frees, the previous file) and the write timed apart
  (h) a step-timed copy of ``atomic_save`` (mkstemp, torch.save, flush+fsync, os.replace,
      stale-temp glob, dir fsync) writing the dict from (d)
``os.sync()`` runs (untimed) before every timed write so no write pays for the previous
one's dirty pages. Target: (a)/(b) <= 1.2x (median). "where (a) - (b) goes" splits the
difference using (d), (g) and (h); its "rest" line is round-to-round noise.

Note for VMs: on this project's Firecracker VMs (free page reporting to the host), writing a
new ~290 MB file while the previous checkpoint's page cache is still alive (which is what a
temp file + rename does) sometimes takes +400-600 ms (first touch of pages the host took
back); an in-place overwrite frees the old pages first and reuses them. Look at the per-round
figures and the minimums as well as the medians.

Part 2, loader (``--only loader``). A map-style dataset of 100k items whose ``__getitem__``
busy-waits ~50 us; DataLoader(batch_size=32, shuffle=True, seeded generator): 3125 batches.
Time until the first batch is in hand:
  (a) fresh epoch: ``next(iter(loader))``
  (b) resumed at batch n: ``make_resumable(loader)``, ``sampler.plan_epoch(skip=n)``,
      ``next(iter(...))``
  (c) naive resume at batch n: iterate the plain loader and discard n batches
for several n. (b)'s first batch is checked to equal (c)'s.

Part 3, end to end (``--only e2e``). ``Trainer.fit`` on that dataset, with a Callback
recording ``perf_counter`` at ``on_batch_start`` (then stopping the run): time from calling
``fit`` to the first training batch for a fresh run, for a run resumed from a checkpoint
written by ``trainer.save_checkpoint`` in ``on_save_point`` after batch 2000, and for the
same resume with a DataLoader subclass (which ``make_resumable`` cannot rebuild, so the
trainer replays the 2000 batches).
"""
import argparse
import contextlib
import gc
import glob
import os
import pickle
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning import checkpoint_io  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402
from pytorch_lightning.data import make_resumable  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loop_overhead import mlp  # noqa: E402

SEED = 1234
SAVE_TARGET = 1.2
QUIET = dict(experiment=False, progress_bar=False, print_weights_summary=False,
             checkpoint_callback=False, early_stop_callback=False, max_nb_epochs=1)
SIZES = {  # name: layer widths
    '1M': (512, 1024, 512, 10),              # 1.05M parameters
    '25M': (1024, 4096, 4096, 1024, 10),     # 25.2M parameters (~100 MB fp32)
}
MB = 1024 * 1024


def med_min(values):
    return statistics.median(values), min(values)


def fmt_ms(values):
    med, mn = med_min(values)
    return f'{med * 1e3:8.1f} / {mn * 1e3:7.1f}'


# ============================================================================ the models
class Classifier(pl.RootModule):
    """``net`` trained with cross-entropy and Adam(``lr``) on ``tng_dataloader``; no validation."""

    def __init__(self, net, lr):
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# ============================================================================ part 1: save
class MLP(Classifier):
    def __init__(self, dims, loader):
        super().__init__(mlp(dims), lr=1e-4)
        self._loader = loader

    @property
    def tng_dataloader(self):
        return self._loader


def _sync_then(fn):
    checkpoint_io.wait_for_saves()  # no background finish of an earlier save overlaps
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _fsync_save(obj, path):
    with open(path, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


BARE_STEPS = ('open (truncate)', 'torch.save')


def _fileobj_save_steps(obj, path, out):
    """Bare ``torch.save`` into ``open(path, 'wb')``, no fsync; the open (which truncates,
    i.e. frees, the previous file) and the write timed apart into ``out[step]``."""
    start = time.perf_counter()
    with open(path, 'wb') as f:
        opened = time.perf_counter()
        torch.save(obj, f)
    out['open (truncate)'].append(opened - start)
    out['torch.save'].append(time.perf_counter() - opened)


ATOMIC_STEPS = ('mkstemp', 'torch.save', 'flush+fsync', 'os.replace', 'stale glob', 'dir fsync')


def _atomic_save_steps(obj, path, out):
    """``checkpoint_io.atomic_save`` step by step (the same calls in the same order, minus
    the error handling), appending each step's seconds to ``out[step]``."""
    clock = [time.perf_counter()]

    def tick(step):
        now = time.perf_counter()
        out[step].append(now - clock[0])
        clock[0] = now

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    tick('mkstemp')
    with os.fdopen(fd, 'wb') as f:
        torch.save(obj, f)
        tick('torch.save')
        f.flush()
        os.fsync(f.fileno())
        tick('flush+fsync')
    os.replace(tmp, path)
    tick('os.replace')
    for stale in glob.glob(os.path.join(glob.escape(folder),
                                        glob.escape('.' + os.path.basename(path)) + '.*.tmp')):
        os.remove(stale)
    tick('stale glob')
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    tick('dir fsync')


class SaveTimer(Callback):
    """At the save point after batch ``at`` (0-based), time the variants ``rounds`` times."""

    def __init__(self, folder, rounds, at=1):
        self.folder, self.rounds, self.at = folder, rounds, at
        self.times = None
        self.steps = {step: [] for step in ATOMIC_STEPS}
        self.bare_steps = {step: [] for step in BARE_STEPS}
        self.info = {}

    def on_save_point(self, trainer, module):
        if self.times is not None or trainer.state.batch_idx != self.at:
            return
        opt = trainer.optimizers[0]
        path = lambda name: os.path.join(self.folder, name)  # noqa: E731

        def bare():
            return {'state_dict': module.state_dict(), 'optimizer': opt.state_dict()}

        built = checkpoint_io.dump(trainer, trainer._position())
        variants = {
            'a': lambda: _sync_then(lambda: trainer.save_checkpoint(path('ckpt.ckpt'))),
            'f': lambda: _sync_then(lambda: (trainer.save_checkpoint(path('ckpt_durable.ckpt')),
                                             checkpoint_io.wait_for_saves())),
            'b': lambda: _sync_then(lambda: torch.save(bare(), path('bare.pt'))),
            'c': lambda: _sync_then(lambda: _fsync_save(bare(), path('bare_fsync.pt'))),
            'd': lambda: _sync_then(lambda: checkpoint_io.dump(trainer, trainer._position())),
            'e': lambda: _sync_then(lambda: checkpoint_io.atomic_save(built, path('built.ckpt'))),
            'g': lambda: _sync_then(lambda: _fileobj_save_steps(bare(), path('bare_fileobj.pt'),
                                                                self.bare_steps)),
            'h': lambda: _sync_then(lambda: _atomic_save_steps(built, path('steps.ckpt'),
                                                               self.steps)),
        }
        names = list(variants)
        for name in names:  # warm-up: create every file once (later rounds replace them)
            variants[name]()
        for step in list(self.steps.values()) + list(self.bare_steps.values()):
            step.clear()
        self.times = {name: [] for name in names}
        for rnd in range(self.rounds):
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                self.times[name].append(variants[name]())
        # what is inside the checkpoint besides the bare dict
        meta = built[checkpoint_io.KEY]
        extra = {k: v for k, v in meta.items() if k != 'optimizers'}
        reps = 200
        start = time.perf_counter()
        for _ in range(reps):
            checkpoint_io.capture_rng()
        self.info = {
            'size_ckpt': os.path.getsize(path('ckpt.ckpt')),
            'size_bare': os.path.getsize(path('bare.pt')),
            'meta_pickle': len(pickle.dumps(extra)),
            'rng_pickle': len(pickle.dumps(meta['rng'])) + len(pickle.dumps(
                meta['position'].get('epoch_start_rng'))),
            'capture_rng_s': (time.perf_counter() - start) / reps,
            'nb_params': sum(p.numel() for p in module.parameters()),
            'global_step': trainer.state.global_step,
            'adam_tensors': sum(len(s) for s in opt.state.values()),
        }
        for name in os.listdir(self.folder):
            os.remove(os.path.join(self.folder, name))


SAVE_LABELS = {
    'a': '(a) trainer.save_checkpoint',
    'f': '(f)   (a) + wait until durable',
    'b': '(b) bare torch.save(path), no fsync',
    'c': '(c) bare torch.save(file)+flush+fsync',
    'd': '(d)   dump() only (build dict)',
    'e': '(e)   atomic_save(built dict)',
    'g': '(g)   bare torch.save(file), no fsync',
    'h': '(h)   atomic_save replica, step-timed',
}


def bench_save(size, rounds, folder):
    dims = SIZES[size]
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(24, dims[0], generator=gen)
    y = torch.randint(0, dims[-1], (24,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 3 batches
    torch.manual_seed(SEED)
    model = MLP(dims, loader)
    timer = SaveTimer(folder, rounds)
    trainer = pl.Trainer(default_save_path=folder, callbacks=[timer], **QUIET)
    trainer.fit(model)
    res = dict(size=size, times=timer.times, steps=timer.steps, bare_steps=timer.bare_steps,
               **timer.info)
    t = {k: statistics.median(v) for k, v in timer.times.items()}
    tmin = {k: min(v) for k, v in timer.times.items()}
    res['ratio_med'], res['ratio_min'] = t['a'] / t['b'], tmin['a'] / tmin['b']
    res['ratio_c_med'], res['ratio_c_min'] = t['a'] / t['c'], tmin['a'] / tmin['c']
    print(f"\n[save {size}] {res['nb_params'] / 1e6:.2f}M params, Adam after "
          f"{res['global_step']} steps ({res['adam_tensors']} state tensors); files "
          f"ckpt {res['size_ckpt'] / MB:.1f} MB, bare {res['size_bare'] / MB:.1f} MB "
          f"(+{res['size_ckpt'] - res['size_bare']} bytes); {rounds} rounds", flush=True)
    print(f"  {'ms, median / min':42}   all rounds")
    for k, label in SAVE_LABELS.items():
        print(f"  {label:42}{fmt_ms(timer.times[k])}   "
              + ' '.join(f'{v * 1e3:.0f}' for v in timer.times[k]))
    for step in BARE_STEPS:
        print(f"  {'        (g) ' + step:42}{fmt_ms(timer.bare_steps[step])}   "
              + ' '.join(f'{v * 1e3:.0f}' for v in timer.bare_steps[step]))
    for step in ATOMIC_STEPS:
        print(f"  {'        (h) ' + step:42}{fmt_ms(timer.steps[step])}   "
              + ' '.join(f'{v * 1e3:.0f}' for v in timer.steps[step]))
    print(f"  ratio (a)/(b): median {res['ratio_med']:.2f}x, min {res['ratio_min']:.2f}x "
          f"(target <= {SAVE_TARGET}x); (a)/(c): median {res['ratio_c_med']:.2f}x, min "
          f"{res['ratio_c_min']:.2f}x")
    print(f"  trainer section of the checkpoint without the optimizer states: "
          f"{res['meta_pickle']} bytes pickled (of which RNG states {res['rng_pickle']} "
          f"bytes); capture_rng() {res['capture_rng_s'] * 1e6:.0f} us")
    del trainer, model, timer
    gc.collect()
    return res


def explain_save(res, pick):
    """Break (a) - (b) into causes, from the medians (``pick=statistics.median``) or the
    minimums (``pick=min``) of each figure. (g) and (h) both write into an open file object;
    (g) truncates (frees) the previous file when it opens it, (h) frees it in os.replace."""
    t = {k: pick(v) for k, v in res['times'].items()}
    s = {k: pick(v) for k, v in res['steps'].items()}
    g = {k: pick(v) for k, v in res['bare_steps'].items()}
    a, b = t['a'], t['b']
    extra = res['size_ckpt'] - res['size_bare']
    parts = [
        ('dump(): build the dict, capture RNG (d)', t['d']),
        (f'write: new temp file {extra / 1024:.0f} KB larger vs truncated file',
         s['torch.save'] - g['torch.save']),
        ('flush + fsync of the data', s['flush+fsync']),
        ('free the previous file: os.replace vs O_TRUNC', s['os.replace'] - g['open (truncate)']),
        ('mkstemp + stale-temp glob + dir fsync', s['mkstemp'] + s['stale glob'] + s['dir fsync']),
        ('bare: torch.save(file) vs torch.save(path) (g)-(b)', t['g'] - b),
    ]
    lines = [f"  [{res['size']}] (a) - (b) = {(a - b) * 1e3:+.1f} ms ({(a / b - 1) * 100:+.0f}% "
             f"of (b)):"]
    for label, value in parts:
        lines.append(f"      {label:52}{value * 1e3:+8.1f} ms")
    rest = (a - b) - sum(v for _, v in parts)
    lines.append(f"      {'rest = (a) - (d) - (h): noise between rounds':52}{rest * 1e3:+8.1f} ms")
    return lines


# ============================================================================ part 2: loader
class SlowDataset(Dataset):
    """``n`` items of (``dim`` floats, class); each ``__getitem__`` busy-waits ``cost_us``."""

    def __init__(self, n, dim=64, cost_us=50.0):
        gen = torch.Generator().manual_seed(SEED)
        self.x = torch.randn(n, dim, generator=gen)
        self.y = torch.randint(0, 2, (n,), generator=gen)
        self.cost_s = cost_us * 1e-6

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.cost_s:
            end = time.perf_counter() + self.cost_s
            while time.perf_counter() < end:
                pass
        return self.x[i], self.y[i]


class ReplayLoader(DataLoader):
    """A DataLoader subclass: ``make_resumable`` leaves it alone, so resuming replays."""


def make_loader(dataset, batch_size=32, cls=DataLoader):
    return cls(dataset, batch_size=batch_size, shuffle=True,
               generator=torch.Generator().manual_seed(SEED))


def first_batch_fresh(dataset):
    loader = make_loader(dataset)
    start = time.perf_counter()
    batch = next(iter(loader))
    return time.perf_counter() - start, batch


def first_batch_resumable(dataset, n):
    loader = make_loader(dataset)
    start = time.perf_counter()
    new_loader, sampler = make_resumable(loader)
    built = time.perf_counter()
    sampler.plan_epoch(skip=n)
    batch = next(iter(new_loader))
    end = time.perf_counter()
    return end - start, built - start, batch


def first_batch_naive(dataset, n):
    loader = make_loader(dataset)
    start = time.perf_counter()
    it = iter(loader)
    for _ in range(n):
        next(it)
    batch = next(it)
    return time.perf_counter() - start, batch


def _slope(xs, ys):
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def bench_loader(n_items, skips, rounds, cost_us):
    dataset = SlowDataset(n_items, cost_us=cost_us)
    nb = -(-n_items // 32)
    print(f"\n[loader] {n_items} items, __getitem__ busy-waits {cost_us:.0f} us, batch 32 "
          f"({nb} batches), shuffle=True; skips {list(skips)}; {rounds} rounds", flush=True)
    fresh, build = [], []
    res = {n: [] for n in skips}
    naive = {n: [] for n in skips}
    first_batch_fresh(dataset)  # warm-up
    first_batch_resumable(dataset, skips[0])
    for rnd in range(rounds):
        jobs = [('fresh', None)] + [('res', n) for n in skips] + [('naive', n) for n in skips]
        shift = rnd % len(jobs)
        checked = {}
        for kind, n in jobs[shift:] + jobs[:shift]:
            gc.collect()
            if kind == 'fresh':
                fresh.append(first_batch_fresh(dataset)[0])
            elif kind == 'res':
                total, b, batch = first_batch_resumable(dataset, n)
                res[n].append(total)
                build.append(b)
                checked.setdefault(n, {})['res'] = batch
            else:
                total, batch = first_batch_naive(dataset, n)
                naive[n].append(total)
                checked.setdefault(n, {})['naive'] = batch
        for n, pair in checked.items():
            same = all(torch.equal(u, v) for u, v in zip(pair['res'], pair['naive']))
            if not same:
                raise AssertionError(f'resumable loader at skip {n} delivered another batch '
                                     f'than the plain loader\'s batch {n}')
    print(f"  {'first batch after, ms (median / min)':40}")
    print(f"  {'(a) fresh epoch, plain DataLoader':40}{fmt_ms(fresh)}")
    for n in skips:
        print(f"  {f'(b) make_resumable + skip({n})':40}{fmt_ms(res[n])}"
              f"     (c) iterate+discard {n:5}: {fmt_ms(naive[n])}")
    print(f"  make_resumable(loader) alone: {fmt_ms(build)} ms; (b) batches equal the plain "
          f"loader's batch n: yes")
    # the index work alone (no data): the sampler's first index list after skip(n), min of 20
    index = {}
    for n in (0,) + tuple(skips):
        best = float('inf')
        for _ in range(20):
            _, sampler = make_resumable(make_loader(dataset))
            start = time.perf_counter()
            sampler.plan_epoch(skip=n)
            next(iter(sampler))
            best = min(best, time.perf_counter() - start)
        index[n] = best
    print("  index work only, ResumableBatchSampler skip(n) -> first index list (min of 20): "
          + ', '.join(f'n={n}: {t * 1e3:.2f} ms' for n, t in index.items()))
    slope_idx = _slope(list(index), list(index.values()))
    slope_c = _slope(list(skips), [statistics.median(naive[n]) for n in skips]) \
        if len(skips) > 1 else None
    print(f"  cost per skipped batch: (b) {slope_idx * 1e6:.2f} us (index work), (c) "
          + (f"{slope_c * 1e6:.0f} us" if slope_c is not None else 'n/a'))
    return dict(fresh=fresh, res=res, naive=naive, build=build, index=index,
                slope_b=slope_idx, slope_c=slope_c, skips=list(skips), n_items=n_items, nb=nb)


# ============================================================================ part 3: e2e
class SlowModel(Classifier):
    def __init__(self, dataset, loader_cls=DataLoader):
        torch.manual_seed(SEED)
        super().__init__(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2)), lr=1e-3)
        self.dataset, self.loader_cls = dataset, loader_cls

    @property
    def tng_dataloader(self):
        return make_loader(self.dataset, cls=self.loader_cls)


class StopRun(Exception):
    """Raised by the callbacks below to end ``fit`` at once (caught around ``fit``); this
    does not depend on how ``should_stop`` interacts with ``min_nb_epochs``."""


def _fit_until_stopped(trainer, model):
    try:
        trainer.fit(model)
    except StopRun:
        pass
    else:
        raise AssertionError('fit ended without reaching the batch the benchmark waits for')


class SaveAfter(Callback):
    """Write a checkpoint at the save point after ``n`` batches, then end the run."""

    def __init__(self, n, path):
        self.n, self.path = n, path

    def on_save_point(self, trainer, module):
        if trainer.state.batch_idx + 1 == self.n:
            trainer.save_checkpoint(self.path)
            raise StopRun


class FirstBatch(Callback):
    """Record when the first training batch arrives (and which), then end the run."""

    def __init__(self):
        self.when = self.batch = self.batch_idx = None

    def on_batch_start(self, trainer, module, batch):
        self.when = time.perf_counter()
        self.batch, self.batch_idx = batch, trainer.state.batch_idx
        raise StopRun


def _fit_first_batch(dataset, folder, resume=None, loader_cls=DataLoader):
    model = SlowModel(dataset, loader_cls)
    probe = FirstBatch()
    trainer = pl.Trainer(default_save_path=folder, callbacks=[probe],
                         resume_from_checkpoint=resume, **QUIET)
    gc.collect()
    with open(os.devnull, 'w') as sink, contextlib.redirect_stdout(sink):
        start = time.perf_counter()
        _fit_until_stopped(trainer, model)
    return probe.when - start, probe


def bench_e2e(n_items, at, rounds, cost_us, folder):
    dataset = SlowDataset(n_items, cost_us=cost_us)
    path = os.path.join(folder, 'mid_epoch.ckpt')
    dataset.cost_s = 0.0  # writing the checkpoint: the data cost does not matter here
    model = SlowModel(dataset)
    trainer = pl.Trainer(default_save_path=folder, callbacks=[SaveAfter(at, path)], **QUIET)
    _fit_until_stopped(trainer, model)
    it = iter(make_loader(dataset))
    for _ in range(at):
        next(it)
    expected = next(it)
    dataset.cost_s = cost_us * 1e-6
    print(f"\n[e2e] Trainer.fit on the slow dataset ({n_items} items, {cost_us:.0f} us/item, "
          f"batch 32); checkpoint written by save_checkpoint in on_save_point after batch "
          f"{at} ({os.path.getsize(path) / 1024:.0f} KB); {rounds} rounds", flush=True)
    jobs = {'fresh': dict(), 'resumed': dict(resume=path),
            'replay': dict(resume=path, loader_cls=ReplayLoader)}
    times = {k: [] for k in jobs}
    _fit_first_batch(dataset, folder)  # warm-up
    names = list(jobs)
    for rnd in range(rounds):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, probe = _fit_first_batch(dataset, folder, **jobs[name])
            times[name].append(elapsed)
            want_idx = 0 if name == 'fresh' else at
            if probe.batch_idx != want_idx:
                raise AssertionError(f'{name}: first batch_idx {probe.batch_idx}, expected '
                                     f'{want_idx}')
            if name != 'fresh' and not all(torch.equal(u, v)
                                           for u, v in zip(probe.batch, expected)):
                raise AssertionError(f'{name}: the resumed first batch is not the plain '
                                     f'loader\'s batch {at}')
    start = time.perf_counter()
    checkpoint_io.load(path)
    load_s = time.perf_counter() - start
    print(f"  {'fit() -> first on_batch_start, ms (median / min)':50}")
    print(f"  {'fresh run (batch 0)':50}{fmt_ms(times['fresh'])}")
    print(f"  {f'resumed at batch {at} (make_resumable, index skip)':50}{fmt_ms(times['resumed'])}")
    print(f"  {f'resumed at batch {at}, DataLoader subclass (replay)':50}{fmt_ms(times['replay'])}")
    print(f"  resumed first batch == plain loader's batch {at}: yes (both resumes); "
          f"checkpoint_io.load alone {load_s * 1e3:.1f} ms")
    return dict(times=times, at=at)


# ============================================================================ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='fewer rounds (save 3, loader 2, e2e 1) and skip counts')
    parser.add_argument('--rounds', type=int, default=None,
                        help='timed rounds for the save and loader parts (default: save 7, '
                             'loader 5)')
    parser.add_argument('--only', choices=('save', 'loader', 'e2e'), action='append',
                        help='run only this part (repeatable)')
    parser.add_argument('--dir', default=None,
                        help='folder for the checkpoint files (default: a temporary folder '
                             'under $TMPDIR); the disk decides the fsync cost')
    parser.add_argument('--sizes', default='1M,25M', help='comma-separated of ' + ','.join(SIZES))
    args = parser.parse_args(argv)
    save_rounds = args.rounds or (3 if args.quick else 7)
    rounds = args.rounds or (2 if args.quick else 5)
    parts = args.only or ['save', 'loader', 'e2e']
    cost_us = 50.0
    n_items, at = 100_000, 2000
    skips = (500, 2000) if args.quick else (250, 500, 1000, 2000)
    e2e_rounds = 1 if args.quick else 3

    print(f"pytorch_lightning {pl.__version__}, torch {torch.__version__}, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}")

    saves, loader, e2e = [], None, None
    with tempfile.TemporaryDirectory(prefix='pl_ckpt_bench_', dir=args.dir) as folder:
        started = time.perf_counter()
        if 'save' in parts:
            print(f"checkpoint folder: {folder}")
            for size in args.sizes.split(','):
                saves.append(bench_save(size, save_rounds, folder))
        if 'loader' in parts:
            loader = bench_loader(n_items, skips, rounds, cost_us)
        if 'e2e' in parts:
            e2e = bench_e2e(n_items, at, e2e_rounds, cost_us, folder)
        print(f"\n(benchmark ran {time.perf_counter() - started:.0f} s)")

    failed = False
    print('\n' + '=' * 78)
    if saves:
        print(f"checkpoint save, ms median / min over {save_rounds} rounds "
              f"(os.sync() before each, untimed)")
        head = f"{'':42}" + ''.join(f"{r['size'] + ' params':>20}" for r in saves)
        print(head)
        rows = [('(a) trainer.save_checkpoint', 'a'), ('(b) bare torch.save, no fsync', 'b'),
                ('(c) bare torch.save + flush + fsync', 'c'),
                ('    of (a): dump() builds the dict', 'd'),
                ('    of (a): atomic_save writes it', 'e')]
        for label, key in rows:
            print(f"{label:42}" + ''.join(f"{fmt_ms(r['times'][key]):>20}" for r in saves))
        print(f"{'ratio (a)/(b), med / min (target 1.2)':42}"
              + ''.join(f"{r['ratio_med']:>11.2f} / {r['ratio_min']:6.2f}" for r in saves))
        print(f"{'ratio (a)/(c), med / min':42}"
              + ''.join(f"{r['ratio_c_med']:>11.2f} / {r['ratio_c_min']:6.2f}" for r in saves))
        print(f"{'file size ckpt / bare, MB':42}"
              + ''.join(f"{r['size_ckpt'] / MB:>11.2f} / {r['size_bare'] / MB:6.2f}"
                        for r in saves))
        for r in saves:
            ok = r['ratio_med'] <= SAVE_TARGET
            failed |= not ok
            print(f"  {r['size']}: (a)/(b) median {r['ratio_med']:.2f}x "
                  f"{'PASS' if ok else 'FAIL'} (target <= {SAVE_TARGET}x)")
        for pick, name in ((statistics.median, 'medians'), (min, 'minimums')):
            print(f"where (a) - (b) goes ({name} of each figure):")
            for r in saves:
                print('\n'.join(explain_save(r, pick)))
    if loader:
        fresh_med = statistics.median(loader['fresh'])
        big = loader['skips'][-1]
        res_med = statistics.median(loader['res'][big])
        naive_med = statistics.median(loader['naive'][big])
        # (b) may exceed (a) by index work only: generous bound 2 us per skipped batch + 20 ms
        bound = fresh_med + 20e-3 + 2e-6 * big
        ok_b = res_med <= bound
        ok_c = naive_med >= 10 * res_med
        failed |= not (ok_b and ok_c)
        print(f"\nfirst batch of an epoch ({loader['n_items']} items, {loader['nb']} batches, "
              f"{cost_us:.0f} us/item), ms median / min")
        print(f"{'skip n':>8}{'(a) fresh':>20}{'(b) resumable':>20}{'(c) naive':>20}")
        for n in loader['skips']:
            print(f"{n:>8}{fmt_ms(loader['fresh']):>20}{fmt_ms(loader['res'][n]):>20}"
                  f"{fmt_ms(loader['naive'][n]):>20}")
        print("index work only (b without loading), min: "
              + ', '.join(f'n={n} {t * 1e3:.2f} ms' for n, t in loader['index'].items()))
        print(f"per skipped batch: (b) {loader['slope_b'] * 1e6:.2f} us (index work), (c) "
              + (f"{loader['slope_c'] * 1e3:.2f} ms" if loader['slope_c'] is not None else 'n/a'))
        print(f"  (b) at skip {big} within index work of (a) ({res_med * 1e3:.1f} <= "
              f"{bound * 1e3:.1f} ms): {'PASS' if ok_b else 'FAIL'}; (c) grows with n "
              f"({naive_med / res_med:.0f}x (b) at skip {big}): {'PASS' if ok_c else 'FAIL'}")
    if e2e:
        t = e2e['times']
        print(f"\nTrainer.fit -> first training batch, ms median / min over "
              f"{len(t['fresh'])} rounds")
        print(f"{'fresh (batch 0)':40}{fmt_ms(t['fresh']):>20}")
        print(f"{'resumed mid-epoch (batch ' + str(e2e['at']) + ')':40}{fmt_ms(t['resumed']):>20}")
        print(f"{'resumed, unrebuildable loader (replay)':40}{fmt_ms(t['replay']):>20}")
        ok = statistics.median(t['resumed']) <= statistics.median(t['fresh']) + 50e-3
        failed |= not ok
        print(f"  resumed within 50 ms of fresh: {'PASS' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

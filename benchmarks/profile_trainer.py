#!/usr/bin/env python
"""Where does ``Trainer.fit`` spend time that the hand-written loop does not?

Companion to ``loop_overhead.py`` (same model, data and hand loop). Three views:

  ablation   hand loop vs Trainer with each default feature alone (bar, logging, summary),
             all off and all on, alternating, in one process (tiny MLP, 2000 steps)
  null       the same on a "null" model (one scalar parameter, batches from a list), so the
             per-step figure is almost only the Trainer's own Python bookkeeping
  micro      timeit of the individual per-step / per-fit pieces (min over repeats)
  cprofile   cProfile of one Trainer fit (tiny MLP, defaults), top functions by own time

Run: ``python benchmarks/profile_trainer.py [--only ablation|null|micro|cprofile]``.
Figures are microseconds per training step unless stated.
"""
import argparse
import collections
import contextlib
import cProfile
import gc
import io
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loop_overhead as lo  # noqa: E402  (puts the repository on sys.path)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.callbacks import MetricsLogging, ProgressBar  # noqa: E402
from pytorch_lightning.loggers import TestTubeLogger  # noqa: E402

STEPS_PER_S = 2000  # the tiny MLP's pace here (~500 us/step), for amortizing per-second costs

QUIET = dict(progress_bar=False, experiment=False, print_weights_summary=False)
CORE = dict(QUIET, checkpoint_callback=False, early_stop_callback=False)
CONFIGS = collections.OrderedDict([
    ('core (every extra off)', CORE),
    ('core + weights summary', dict(CORE, print_weights_summary=True)),
    ('core + progress bar', dict(CORE, progress_bar=True)),
    ('core + test-tube logging', dict(CORE, experiment=None)),
    ('core + early stopping', dict(CORE, early_stop_callback=None)),
    ('core + checkpointing', dict(CORE, checkpoint_callback=None)),
    ('(b) bar/log/summary off', QUIET),
    ('(a) defaults', {}),
])


def _time(fn, sink):
    gc.collect()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def _fit(make, kwargs, save_dir):
    model = make()
    trainer = pl.Trainer(default_save_path=save_dir, max_nb_epochs=1, nb_sanity_val_steps=0,
                         **kwargs)
    return lambda: trainer.fit(model)


def _compare(title, make, hand, steps, rounds, save_dir, sink, configs=None):
    print(f"\n[{title}] {steps} steps, 1 warm-up + {rounds} rounds, us/step median (min); "
          f"delta = median minus the hand loop's median (load average "
          f"{os.getloadavg()[0]:.2f})", flush=True)
    sides = ['hand'] + list(configs or CONFIGS)
    times = {s: [] for s in sides}
    for rnd in range(rounds + 1):
        order = sides if rnd % 2 == 0 else sides[::-1]
        for side in order:
            fn = (lambda: hand(make())) if side == 'hand' else _fit(make, CONFIGS[side], save_dir)
            elapsed = _time(fn, sink)
            if rnd:
                times[side].append(elapsed / steps * 1e6)
    base = statistics.median(times['hand'])
    for side in sides:
        med = statistics.median(times[side])
        print(f"  {side:26}{med:9.1f} ({min(times[side]):7.1f})   delta {med - base:+7.1f}"
              f"   x{med / base:.3f}", flush=True)


# ------------------------------------------------------------------------- null model
class NullModel(pl.RootModule):
    """One scalar parameter; each batch is a ready tensor in a list (no DataLoader)."""

    def __init__(self, steps, val_batches=50):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self._train = [torch.ones(()) for _ in range(steps)]
        self._val = [torch.ones(()) for _ in range(val_batches)]

    def training_step(self, data_batch, batch_nb):
        return self.w * data_batch

    def validation_step(self, data_batch, batch_nb):
        return {'val_loss': self.w * data_batch}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-6)

    @property
    def tng_dataloader(self):
        return self._train

    @property
    def val_dataloader(self):
        return self._val


def null_hand(model):
    opt = model.configure_optimizers()
    model.train()
    for x in model._train:
        loss = model.w * x
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        val = torch.stack([model.w * x for x in model._val]).mean()
    model.train()
    return val.item()


# ------------------------------------------------------------------------- micro
def _us(stmt, number, repeat=7, **ns):
    """min over ``repeat`` of the mean time of ``stmt`` in microseconds."""
    return min(timeit.repeat(stmt, globals=ns, number=number, repeat=repeat)) / number * 1e6


def micro(save_dir, sink):
    print("\n[micro] min over 7 repeats; 'per step' amortizes per-N-steps and per-fit costs "
          "over 2000 steps with the default intervals (row every 10, save every 100)")
    cfg = lo.VARIANTS['a']
    data = lo.make_data(cfg)
    model = lo.make_model(cfg, data)
    x, y = next(iter(model._train_loader))
    loss = nn.functional.cross_entropy(model(x), y)
    rows = []

    def add(name, per_call, per_step_factor, note=''):
        rows.append((name, per_call, per_call * per_step_factor, note))

    add('loss.item() (CPU, every step)', _us('loss.item()', 20000, loss=loss), 1)
    add('math.isfinite + deque.append', _us('isf(v); d.append(v)', 200000, isf=math.isfinite,
        v=1.0, d=collections.deque(maxlen=20)), 1)

    # a real Trainer, set up like fit() but without training
    trainer = pl.Trainer(default_save_path=save_dir, max_nb_epochs=1, nb_sanity_val_steps=0)
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        trainer._setup_fit(model)
        trainer._hooks.call('on_fit_start')
        trainer.nb_batches_this_epoch = 2000
        trainer._hooks.call('on_epoch_start')
        trainer.last_loss = loss.detach()
        trainer._recent_losses.extend([loss.item()] * 20)
        bar = next(c for c in trainer._active_callbacks if isinstance(c, ProgressBar))
        logcb = next(c for c in trainer._active_callbacks if isinstance(c, MetricsLogging))
        bar._next_draw = float('inf')
        add('ProgressBar.on_batch_end (no redraw)',
            _us('f()', 100000, f=lambda: bar.on_batch_end(trainer, model)), 1)
        add('ProgressBar._draw (a redraw)',
            _us('f()', 200, f=lambda: bar._draw(trainer, 0.0)), 0,
            'at most once per 0.2 s (see below)')
        draw_us = rows[-1][1]
        logcb._until_save = 10 ** 9
        per10 = _us('f()', 1000, f=lambda: logcb.on_batch_end(trainer, model))
        add('MetricsLogging.on_batch_end (avg, row/10)', per10, 1,
            'row built every 10th step, the append included')
        logger = trainer.logger
        add('TestTubeLogger.request_save()', _us('f()', 2000, f=logger.request_save), 1 / 100,
            'every 100 steps; the writer thread saves within a second')
        row = {'loss': 0.5, 'epoch': 0}
        add('TestTubeLogger.log_metrics', _us('f(r, 0)', 2000, f=logger.log_metrics, r=row),
            1 / 10, 'every 10 steps: a list append (the writer thread hands rows to test-tube)')
        add('tqdm_metrics (in a redraw)', _us('t.tqdm_metrics', 2000, t=trainer), 0)
        hooks = trainer._hooks
        add('HookDispatcher: 3 empty hook loops', _us(
            'for f in a: f()\nfor f in b: f()\nfor f in c: f()', 200000,
            a=hooks.hooks['on_batch_start'], b=hooks.hooks['on_after_backward'],
            c=hooks.hooks['on_before_zero_grad']), 1)
        # let the writer drain what we sent, then time a close on a fresh fit-sized log
        trainer._hooks.call('on_fit_end')
    # per-fit costs
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        add('Trainer(...) constructor', _us(
            'pl.Trainer(default_save_path=d, max_nb_epochs=1, nb_sanity_val_steps=0)', 20,
            pl=pl, d=save_dir), 0, 'outside the timed region')

        def setup_only():
            t = pl.Trainer(default_save_path=save_dir, max_nb_epochs=1, nb_sanity_val_steps=0,
                           **QUIET)
            t._setup_fit(lo.make_model(cfg, data))
        add('_setup_fit (checks, hooks, optimizer)', _us('f()', 20, f=setup_only) -
            _us('f()', 20, f=lambda: lo.make_model(cfg, data)), 1 / 2000)
        add('model.summarize()', _us('m.summarize()', 200, m=model), 1 / 2000)

        def bar_life():
            b = ProgressBar()
            b.on_fit_start(trainer, model)
            b.on_epoch_start(trainer, model)
            b.on_fit_end(trainer, model)
        add('tqdm bar create + close', _us('f()', 20, f=bar_life), 1 / 2000)

        def logger_life(nrows):
            lg = TestTubeLogger(save_dir=save_dir, name='micro')
            for i in range(nrows):
                lg.log_metrics({'loss': 0.5, 'epoch': 0}, i)
                if i % 10 == 9:
                    lg.save()
            start = time.perf_counter()
            lg.finalize()
            return time.perf_counter() - start
        logger_life(1)  # the writer process is started once per Python process
        finals = []
        for _ in range(5):
            lg = TestTubeLogger(save_dir=save_dir, name='micro')
            for i in range(200):
                lg.log_metrics({'loss': 0.5, 'epoch': 0}, i)
            for i in range(20):
                lg.save()
            time.sleep(1.0)  # a fit of ~1 s: the writer has had time to catch up
            start = time.perf_counter()
            lg.finalize()
            finals.append((time.perf_counter() - start) * 1e6)
        add('logger.finalize() at fit end (writer caught up)', min(finals), 1 / 2000,
            'waits for close: save + close of a 200-row experiment')
        cold = []
        for _ in range(3):
            cold.append(logger_life(200) * 1e6)
        add('logger.finalize() right after 200 rows+20 saves', min(cold), 1 / 2000,
            'worst case: writer still busy')

    # what the writer process does per request (test_tube imported here, in this script only)
    from test_tube import Experiment
    exp = Experiment(save_dir=save_dir, name='direct')
    row = {'loss': 0.5, 'epoch': 0}
    per_log = _us('e.log(dict(r), global_step=0)', 200, repeat=3, e=exp, r=row)
    add('[writer] test_tube Experiment.log', per_log, 0,
        'writer CPU per row, not on the training thread')
    exp.metrics = exp.metrics[:200]
    add('[writer] Experiment.save, 200 rows', _us('e.save()', 10, repeat=3, e=exp), 0,
        'writer CPU; grows with the rows')
    exp.metrics = exp.metrics * 10
    add('[writer] Experiment.save, 2000 rows', _us('e.save()', 5, repeat=3, e=exp), 0,
        'later in a long run')
    exp.close()

    width = max(len(r[0]) for r in rows) + 2
    print(f"  {'piece':{width}}{'us/call':>10}{'us/step':>10}  note")
    for name, per_call, per_step, note in rows:
        print(f"  {name:{width}}{per_call:10.2f}{per_step:10.2f}  {note}")
    print(f"  (a bar redraw costs {draw_us:.0f} us; at most one per 0.2 s, i.e. ~5 per "
          f"second of training)")


# ------------------------------------------------------------------------- cProfile
def _profile(fn, sink):
    prof = cProfile.Profile()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        prof.enable()
        fn()
        prof.disable()
    return pstats.Stats(prof, stream=io.StringIO()).stats


def _where(key):
    path, line, name = key
    if path.startswith(lo.REPO):
        path = os.path.relpath(path, lo.REPO)
    elif path != '~':
        path = os.path.basename(path)
    return f"{path}:{line}({name})"


def profile_fit(save_dir, sink, kwargs, label, top=20, null=False):
    """cProfile the hand loop and one fit; list what the fit calls MORE often than the hand
    loop (extra work), by extra own time. Same-count torch calls are left out (noise)."""
    if null:
        steps = 4000
        make, hand_fn = (lambda: NullModel(steps)), null_hand
    else:
        cfg = lo.VARIANTS['a']
        data = lo.make_data(cfg)
        steps = cfg['steps']
        make, hand_fn = (lambda: lo.make_model(cfg, data)), lo.hand_loop
    for _ in range(2):  # warm up (the writer process is started once)
        _time(_fit(make, kwargs, save_dir), sink)
        _time(lambda: hand_fn(make()), sink)
    hand = _profile(lambda: hand_fn(make()), sink)
    fit = _profile(_fit(make, kwargs, save_dir), sink)
    total_hand = sum(v[2] for v in hand.values()) / steps * 1e6
    total_fit = sum(v[2] for v in fit.values()) / steps * 1e6
    rows = []
    for key, (cc, nc, tt, ct, _) in fit.items():
        h = hand.get(key, (0, 0, 0.0, 0.0, None))
        if nc > h[1]:
            rows.append((tt - h[2], nc, h[1], ct, key))
    rows.sort(key=lambda r: -r[0])
    print(f"\n[cprofile] {'null model' if null else 'tiny MLP'}, {label}: profiled total "
          f"{total_fit:.1f} us/step vs hand loop {total_hand:.1f} (cProfile inflates Python "
          f"calls). Functions the fit calls more often than the hand loop, by extra own time:")
    print(f"  {'calls':>7}{'(hand)':>8}{'extra own':>11}{'cum':>9}  us/step, function")
    for extra, nc, hnc, ct, key in rows[:top]:
        print(f"  {nc:7d}{hnc:8d}{extra / steps * 1e6:11.2f}{ct / steps * 1e6:9.2f}  {_where(key)}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--only', action='append',
                        choices=['ablation', 'null', 'micro', 'cprofile', 'cprofile-null'])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--variant', choices=['a', 'c'], default='a',
                        help='model for the ablation (c: fewer configurations)')
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.only or ['ablation', 'null', 'micro', 'cprofile']
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix='pl_prof_') as save_dir, \
            open(os.devnull, 'w') as sink:
        if 'ablation' in parts:
            cfg = lo.VARIANTS[args.variant]
            data = lo.make_data(cfg)
            configs = None if args.variant == 'a' else [
                'core (every extra off)', 'core + test-tube logging', 'core + checkpointing',
                '(a) defaults']
            _compare(f'ablation, variant {args.variant} model', lambda: lo.make_model(cfg, data),
                     lo.hand_loop, cfg['steps'], args.rounds, save_dir, sink, configs)
        if 'null' in parts:
            steps = 4000  # more rows make finalize() fail: see docs/performance.md
            _compare('null model: the Trainer\'s own per-step Python', lambda: NullModel(steps),
                     null_hand, steps, args.rounds, save_dir, sink)
        if 'micro' in parts:
            micro(save_dir, sink)
        if 'cprofile' in parts:
            profile_fit(save_dir, sink, {}, 'defaults')
            profile_fit(save_dir, sink, QUIET, 'bar/logging/summary off')
        if 'cprofile-null' in parts:
            profile_fit(save_dir, sink, CORE, 'core (every extra off)', null=True)
            profile_fit(save_dir, sink, dict(CORE, progress_bar=True), 'core + bar', null=True)
            profile_fit(save_dir, sink, dict(CORE, experiment=None), 'core + logging',
                        null=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == '__main__':
    main()

#!/usr/bin/env python
"""How much does ``Trainer(distributed_backend='ddp')`` cost over a DDP loop written by hand?

Run from the repository root::

    python benchmarks/ddp_overhead.py            # 1 warm-up round + 4 timed rounds (~4 min)
    python benchmarks/ddp_overhead.py --quick    # 1 warm-up round + 2 timed rounds (~2.5 min)
    python benchmarks/ddp_overhead.py --only tiny --only aa    # some parts only

Both sides train on CPU processes with gloo: ``fit`` starts its ranks itself (fresh
interpreters, ``placement/launch.py``); the hand side starts its ranks with
``torch.multiprocessing.start_processes(..., start_method='spawn')``, then
``init_process_group('gloo')``, wraps the model in ``DistributedDataParallel`` and loops. The
same model (seeded the same way), the same data (built inside each rank from a seed), the same
``DistributedSampler`` (shuffle, seed, per-process batch size), Adam, one epoch, no validation.
``OMP_NUM_THREADS`` (``--threads``, default 1) is set for every process of both sides, so 2
processes fit the 2 cores of the project's machine; rank 0 of each run reports the thread count
it had.

Every rank stamps ``time.perf_counter()`` when each training batch starts (the Trainer side from
a callback's ``on_batch_start``, the hand side at the top of its loop body; both after the batch
is loaded) and rank 0 writes its stamps to a file in a temporary folder. From them:

1. **Steady-state time per step**: (start of the last batch - start of batch ``warm``) /
   batches in between, on rank 0. Process start, the group's setup and the first ``warm``
   batches are not in it. Variants:

     tiny           MLP 32->32->2, batch 32 per process, 1000 steps per rank, warm 20
     tiny-defaults  the same with the Trainer's defaults (progress bar, test-tube logging,
                    weights summary, checkpoint callback; the output goes to a log file)
     big            MLP 512->2048->2048->10, batch 256 per process, 40 steps per rank, warm 10
     aa             the control: the hand loop against itself (tiny); its spread is the noise

   tiny and big run the Trainer with ``progress_bar=False, experiment=False,
   print_weights_summary=False, checkpoint_callback=False, early_stop_callback=False,
   nb_sanity_val_steps=0``. Each round runs both sides back to back, alternating which goes
   first; the figure judged (target <= 1.05) is the median over rounds of the paired ratio
   trainer / hand of the same round, printed with its quartiles. Round 0 is a warm-up that
   checks the two sides end with the same weights.

2. **Start**: wall clock (``time.time()``) from the launching process's call (``fit`` /
   ``start_processes``) to the first training batch starting on rank 0, from the same runs.

3. **Throughput** (samples per second of the whole job, all ranks, steady part) of the Trainer
   on the big model with 2 processes (the ``big`` runs) and with 1 (``distributed_backend='ddp',
   num_processes=1``: one spawned rank in a gloo world of one), each rank doing the same steps.
"""
import argparse
import contextlib
import functools
import gc
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# Only torch here: mp.spawn runs this file again (as __mp_main__) in every hand-side rank, and
# those ranks must not pay for importing pytorch_lightning. The Trainer side imports it in
# trainer_classes().
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402

SEED = 1234
LR = 1e-3
TARGET = 1.05
LATENCY_REPS = 200
BARE = dict(progress_bar=False, experiment=False, print_weights_summary=False,
            checkpoint_callback=False, early_stop_callback=False, nb_sanity_val_steps=0)

TINY = dict(dims=(32, 32, 2), batch=32, steps=1000, warm=20)
BIG = dict(dims=(512, 2048, 2048, 10), batch=256, steps=40, warm=10)
VARIANTS = {
    'tiny': dict(TINY, title='tiny MLP, Trainer with bar/logging/summary/checkpoints off',
                 trainer=BARE),
    'tiny-defaults': dict(TINY, title='tiny MLP, Trainer defaults (bar, logging, summary, '
                                      'checkpoint callback)', trainer={}),
    'big': dict(BIG, title='compute-bound MLP, Trainer with bar/logging/summary/checkpoints '
                           'off', trainer=BARE),
    'aa': dict(TINY, title='control: hand loop vs hand loop (noise floor)', trainer=None),
}
ORDER = ('tiny', 'tiny-defaults', 'big', 'aa')


# ---------------------------------------------------------------------------- the work
def mlp(dims):
    """Linear layers through ``dims``, ReLU between them. (loop_overhead.py has the same
    helper; importing it would import pytorch_lightning into the hand-side ranks.)"""
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_dataset(cfg, nprocs):
    """``steps`` batches per rank of random inputs and labels, the same in every process (built
    in each rank from the seed, so neither side sends data to its ranks)."""
    gen = torch.Generator().manual_seed(SEED)
    n = cfg['steps'] * cfg['batch'] * nprocs
    x = torch.randn(n, cfg['dims'][0], generator=gen)
    y = torch.randint(0, cfg['dims'][-1], (n,), generator=gen)
    return TensorDataset(x, y)


class Stamps:
    """In one rank: the wall time (``time.time()``) of the first batch start and the
    ``perf_counter`` of every batch start; ``write`` puts them in a JSON file."""

    def __init__(self):
        self.first_wall = None
        self.starts = []

    def batch_start(self):
        if self.first_wall is None:
            self.first_wall = time.time()
        self.starts.append(time.perf_counter())

    def write(self, path, world_size, **extra):
        with open(path, 'w') as file:
            json.dump(dict(extra, first_wall=self.first_wall, starts=self.starts,
                           world_size=world_size, threads=torch.get_num_threads()), file)


def allreduce_latency(reps=LATENCY_REPS):
    """Seconds per blocking ``all_reduce`` of 3 floats (every rank calls it): what one
    agreement point of the Trainer's loop costs on this machine."""
    flags = torch.zeros(3)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(reps):
        dist.all_reduce(flags)
    return (time.perf_counter() - start) / reps


def hand_worker(rank, cfg, nprocs, port, stamps_path, weights_path):
    """One rank of the hand-written DDP loop: what a researcher writes."""
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=nprocs)
    torch.manual_seed(SEED)
    model = mlp(cfg['dims'])
    ddp = DistributedDataParallel(model)
    data = make_dataset(cfg, nprocs)
    sampler = DistributedSampler(data, num_replicas=nprocs, rank=rank, shuffle=True, seed=SEED)
    loader = DataLoader(data, batch_size=cfg['batch'], sampler=sampler)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    stamps = Stamps()
    sampler.set_epoch(0)
    for x, y in loader:
        stamps.batch_start()
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    latency = allreduce_latency()  # after the timed part
    if rank == 0:
        stamps.write(stamps_path, nprocs, allreduce_s=latency)
        if weights_path:
            torch.save(model.state_dict(), weights_path)
    # The DDP wrapper is a reference cycle: freed only by the garbage collector, it may still
    # be alive when the group is destroyed, and torch then sometimes aborts the process at exit
    # ("terminate called without an active exception"; without these two lines, 10 of 30 runs
    # of this loop had a rank killed by SIGABRT on the 2-core VM, with them none of 30).
    del ddp
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


@functools.lru_cache(maxsize=None)
def trainer_classes():
    """``(BenchModule, StampCallback)``, the Trainer side's module and timing callback. Made
    here rather than at import (see the imports); ``fit`` sends them to its ranks by value."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    class BenchModule(pl.RootModule):
        """The same MLP; ``training_step`` returns the bare loss, the loader is a plain
        shuffling DataLoader that ``fit`` rebuilds around a DistributedSampler."""

        def __init__(self, cfg, nprocs):
            super().__init__()
            self.net = mlp(cfg['dims'])
            self.cfg, self.nprocs = cfg, nprocs

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_nb):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR)

        def tng_dataloader(self):
            return DataLoader(make_dataset(self.cfg, self.nprocs), batch_size=self.cfg['batch'],
                              shuffle=True)

    class StampCallback(Callback):
        """Stamps each batch start; rank 0 writes the stamps at the end of the epoch."""

        def __init__(self, path):
            self.path = path
            self.stamps = Stamps()

        def on_batch_start(self, trainer, module, batch):
            self.stamps.batch_start()

        def on_epoch_end(self, trainer, module):
            if trainer.is_global_zero:
                self.stamps.write(self.path, trainer.world_size)

    return BenchModule, StampCallback


# ---------------------------------------------------------------------------- running
def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def output_to(log_path):
    """Send this process's and its children's stdout and stderr (file descriptors 1 and 2,
    which the ranks of both sides inherit) to ``log_path`` (``None``: leave them). If the block
    raises, the end of the log is printed before the error goes on: a rank's traceback is
    there."""
    if log_path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    except BaseException:
        _restore(saved, log)
        with open(log_path, errors='replace') as file:
            tail = file.read()[-4000:]
        print(f'--- the end of {log_path}:\n{tail}\n---', file=sys.stderr, flush=True)
        raise
    else:
        _restore(saved, log)


def _restore(saved, log):
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in saved + (log,):
        os.close(fd)


def run_side(side, cfg, nprocs, work_dir, tag, keep_weights=False, show=False):
    """One run of ``side`` ('hand' or 'trainer'); returns a dict: ``step_s`` (rank 0's steady
    seconds per step), ``start_s`` (launch call to rank 0's first batch), ``wall_s`` (the whole
    call), ``threads``, ``allreduce_s`` (hand side), ``steps`` and the final ``weights`` when
    asked.

    A run in which a rank died of SIGABRT after rank 0 had written its stamps (the end of the
    epoch) is run once more, with a note: torch sometimes aborts a process at exit when a
    DistributedDataParallel wrapper outlives its process group (see hand_worker)."""
    stamps_path = os.path.join(work_dir, f'{tag}-stamps.json')
    for attempt in (1, 2):
        log = None if show else os.path.join(work_dir, f'{tag}-{attempt}.log')
        try:
            launched, wall, weights = _launch(side, cfg, nprocs, work_dir, tag, stamps_path,
                                              keep_weights, log)
            break
        except Exception as err:
            if attempt == 2 or not (_aborted(err) and os.path.exists(stamps_path)):
                raise
            print(f"  note: {tag}: a rank was killed by SIGABRT after the epoch ({err}); the "
                  f"run is repeated", flush=True)
            os.remove(stamps_path)
    with open(stamps_path) as file:
        got = json.load(file)
    starts, warm = got['starts'], cfg['warm']
    if len(starts) != cfg['steps']:
        raise RuntimeError(f'{side}: rank 0 ran {len(starts)} batches, expected {cfg["steps"]}')
    steady = len(starts) - 1 - warm
    return dict(step_s=(starts[-1] - starts[warm]) / steady,
                start_s=got['first_wall'] - launched, wall_s=wall, threads=got['threads'],
                allreduce_s=got.get('allreduce_s'), steps=len(starts), weights=weights)


def _launch(side, cfg, nprocs, work_dir, tag, stamps_path, keep_weights, log):
    """Start the ranks of one run and wait for them: ``(launch time.time(), wall seconds,
    final weights or None)``."""
    if side == 'hand':
        weights_path = os.path.join(work_dir, f'{tag}-weights.pt') if keep_weights else ''
        args = (cfg, nprocs, free_port(), stamps_path, weights_path)
        with output_to(log):
            launched = time.time()
            mp.start_processes(hand_worker, args=args, nprocs=nprocs, start_method='spawn')
            wall = time.time() - launched
        return launched, wall, torch.load(weights_path) if keep_weights else None
    import pytorch_lightning as pl
    module_class, callback_class = trainer_classes()
    torch.manual_seed(SEED)  # the hand ranks seed the same way before building the model
    model = module_class(cfg, nprocs)
    trainer = pl.Trainer(default_save_path=os.path.join(work_dir, f'{tag}-logs'),
                         max_nb_epochs=1, distributed_backend='ddp', num_processes=nprocs,
                         callbacks=[callback_class(stamps_path)], **cfg['trainer'])
    with output_to(log):
        launched = time.time()
        trainer.fit(model)
        wall = time.time() - launched
    return launched, wall, model.net.state_dict() if keep_weights else None


def _aborted(err):
    """Whether ``err`` says a rank was killed by SIGABRT (fit's RankFailedError, or
    torch.multiprocessing's ProcessExitedException)."""
    return getattr(err, 'exitcode', None) == -signal.SIGABRT or \
        getattr(err, 'signal_name', None) == 'SIGABRT'


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def quartiles(values):
    return statistics.quantiles(values, n=4) if len(values) > 1 else values * 3


def bench_variant(name, rounds, work_dir, show):
    cfg = VARIANTS[name]
    sides = ('hand', 'hand2') if cfg['trainer'] is None else ('hand', 'trainer')
    print(f"\n[{name}] {cfg['title']}: dims {'->'.join(map(str, cfg['dims']))}, batch "
          f"{cfg['batch']} per process, {cfg['steps']} steps per rank (steady from batch "
          f"{cfg['warm']}), 2 processes (load average {os.getloadavg()[0]:.2f})", flush=True)
    runs = {side: [] for side in sides}
    paired = []
    # round 0 is the warm-up (it checks that both sides end with the same weights); the control
    # compares the hand loop with itself and skips it
    for rnd in range(0 if cfg['trainer'] is not None else 1, rounds + 1):
        order = sides if rnd % 2 == 0 else sides[::-1]
        got = {}
        for side in order:
            got[side] = run_side('trainer' if side == 'trainer' else 'hand', cfg, 2, work_dir,
                                 f'{name}-{rnd}-{side}', keep_weights=rnd == 0, show=show)
        a, b = got[sides[0]], got[sides[1]]
        line = (f"{sides[0]} {a['step_s'] * 1e6:9.1f} us/step, start {a['start_s']:5.2f} s   "
                f"{sides[1]} {b['step_s'] * 1e6:9.1f} us/step, start {b['start_s']:5.2f} s")
        if rnd == 0:
            threads = sorted({r['threads'] for r in got.values()})
            print(f"  warm-up  {line}   (final weights max |diff|: "
                  f"{max_diff(a['weights'], b['weights']):.2e}; torch threads in rank 0: "
                  f"{threads})", flush=True)
            continue
        for side in sides:
            runs[side].append(got[side])
        paired.append(b['step_s'] / a['step_s'])
        print(f"  round {rnd}  {line}   ratio {paired[-1]:.3f}", flush=True)
    return dict(name=name, sides=sides, runs=runs, paired=paired,
                target=None if cfg['trainer'] is None else TARGET)


def bench_single(rounds, work_dir, show, warm_up):
    """The Trainer on the big model with one process (num_processes=1, 'ddp'); ``warm_up``: run
    once more first, untimed (when nothing ran before, to fill the bytecode cache)."""
    cfg = dict(VARIANTS['big'], trainer=BARE)
    print(f"\n[big-1] compute-bound MLP, Trainer(distributed_backend='ddp', num_processes=1), "
          f"{cfg['steps']} steps (load average {os.getloadavg()[0]:.2f})", flush=True)
    if warm_up:
        run_side('trainer', cfg, 1, work_dir, 'big1-0', show=show)
    runs = []
    for rnd in range(1, rounds + 1):
        got = run_side('trainer', cfg, 1, work_dir, f'big1-{rnd}', show=show)
        runs.append(got)
        print(f"  round {rnd}  trainer {got['step_s'] * 1e6:9.1f} us/step, start "
              f"{got['start_s']:5.2f} s, threads {got['threads']}", flush=True)
    return runs


# ---------------------------------------------------------------------------- report
def _spread(values):
    return f"{statistics.median(values):6.2f}  [{min(values):.2f}-{max(values):.2f}]"


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def report(results, single, rounds):
    failed = False
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; 2 processes per job, gloo, "
          f"torch threads per process as printed in the warm-up lines")
    if results:
        print(f"\n1. steady-state time per training step on rank 0, microseconds (median over "
              f"{rounds} rounds); ratio: median of the per-round paired ratios (trainer / hand "
              f"of the same round) with their quartiles; min/min: fastest trainer run / "
              f"fastest hand run")
        head = (f"{'variant':15}{'hand':>10}{'trainer':>10}{'ratio':>8}{'quartiles':>15}"
                f"{'min/min':>9}{'target':>8}  result")
        print(head)
        print('-' * len(head))
        for r in results:
            first, second = ([run['step_s'] * 1e6 for run in r['runs'][side]]
                             for side in r['sides'])
            ratio, q = statistics.median(r['paired']), quartiles(r['paired'])
            line = (f"{r['name']:15}{statistics.median(first):10.1f}"
                    f"{statistics.median(second):10.1f}{ratio:8.3f}  {q[0]:.3f}-{q[2]:.3f}"
                    f"{min(second) / min(first):9.3f}")
            if r['target'] is None:
                print(f"{line}       -  control (hand / hand): the noise floor")
                continue
            failed |= ratio > r['target']
            print(f"{line}{r['target']:7.2f}x  {'PASS' if ratio <= r['target'] else 'FAIL'}")

        print("\n2. launch call to the first training batch on rank 0, seconds (median over "
              "the timed rounds [min-max]; the warm-up round, which fills the bytecode cache, "
              "is left out)")
        pooled = {}
        for r in results:
            for side in r['sides']:
                starts = [x['start_s'] for x in r['runs'][side]]
                label = 'trainer.fit' if side == 'trainer' else 'hand: start_processes'
                print(f"  {r['name']:15}{label:30}{_spread(starts)}")
                kind = ('hand, all variants' if side != 'trainer' else
                        'trainer.fit, defaults' if r['name'] == 'tiny-defaults' else
                        "trainer.fit, 'off' settings")
                pooled.setdefault(kind, []).extend(starts)
        for kind, starts in pooled.items():
            print(f"  {'pooled':15}{kind:30}{_spread(starts)}  ({len(starts)} runs)")

        latencies = [run['allreduce_s'] for r in results for side in r['sides']
                     for run in r['runs'][side] if run['allreduce_s'] is not None]
        if latencies:
            print(f"\none blocking gloo all_reduce of 3 floats between the 2 hand-side ranks "
                  f"(after their loop; {LATENCY_REPS} in a row): median "
                  f"{statistics.median(latencies) * 1e6:.0f} us [{min(latencies) * 1e6:.0f}-"
                  f"{max(latencies) * 1e6:.0f}] over {len(latencies)} runs")

    big = next((r for r in results if r['name'] == 'big'), None)
    if big is not None or single:
        batch = VARIANTS['big']['batch']
        print(f"\n3. throughput on the compute-bound model, samples/s of the whole job "
              f"(processes x batch {batch} / steady step time of rank 0; median over rounds)")
        rows = []
        if single:
            rows.append(("Trainer, 'ddp', num_processes=1", 1, single))
        if big is not None:
            rows.append(("Trainer, 'ddp', num_processes=2", 2, big['runs']['trainer']))
            rows.append(('hand DDP loop, 2 processes', 2, big['runs']['hand']))
        rate = {}
        for label, nprocs, runs in rows:
            rate[label] = nprocs * batch / med(runs, 'step_s')
            print(f"  {label:34}{rate[label]:9.0f} samples/s   ({med(runs, 'step_s') * 1e3:.1f} "
                  f"ms/step, start {med(runs, 'start_s'):.2f} s)")
        if len(rows) > 1 and single:
            print(f"  Trainer speed-up 2 processes / 1: "
                  f"{rate[rows[1][0]] / rate[rows[0][0]]:.2f}x")
    return 1 if failed else 0


# ---------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='2 timed rounds instead of 4')
    parser.add_argument('--rounds', type=int, default=None, help='timed rounds (default 4)')
    parser.add_argument('--only', choices=list(ORDER) + ['big-1'], action='append',
                        help='run only this part (repeatable)')
    parser.add_argument('--threads', type=int, default=1,
                        help='OMP_NUM_THREADS for every process of both sides (default 1)')
    parser.add_argument('--show-output', action='store_true',
                        help="let the ranks' output through (default: into a log file, whose "
                             "end is printed if a run fails)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 4)
    parts = args.only or list(ORDER) + ['big-1']
    # every rank of both sides inherits it and starts torch with that many threads
    os.environ['OMP_NUM_THREADS'] = str(args.threads)
    torch.set_num_threads(args.threads)
    for name in ('MASTER_ADDR', 'MASTER_PORT', 'RANK', 'WORLD_SIZE'):
        os.environ.pop(name, None)  # both sides start a world of their own

    import pytorch_lightning as pl
    print(f"pytorch_lightning {pl.__version__}, torch {torch.__version__}, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={args.threads} "
          f"in every process of both sides, load average {os.getloadavg()[0]:.2f}")
    print(f"1 warm-up round + {rounds} timed rounds per variant, alternating which side goes "
          f"first; Adam, one epoch, no validation; Trainer(distributed_backend='ddp', "
          f"num_processes=2, max_nb_epochs=1) launched by fit; hand side: "
          f"start_processes(start_method='spawn') + init_process_group('gloo') + DDP")
    print(f"'off' variants: Trainer({', '.join(f'{k}={v}' for k, v in BARE.items())})")

    results, single = [], None
    with tempfile.TemporaryDirectory(prefix='pl_ddp_bench_') as work_dir:
        # the ranks of both sides read and write compiled bytecode in a temporary folder (as
        # an installed package has it), even where PYTHONDONTWRITEBYTECODE is set: otherwise
        # every Trainer rank compiles pytorch_lightning from source. The warm-up fills it.
        os.environ.pop('PYTHONDONTWRITEBYTECODE', None)
        os.environ['PYTHONPYCACHEPREFIX'] = os.path.join(work_dir, 'pycache')
        for name in ORDER:
            if name in parts:
                results.append(bench_variant(name, rounds, work_dir, args.show_output))
        if 'big-1' in parts:
            single = bench_single(rounds, work_dir, args.show_output, warm_up=not results)
    return report(results, single, rounds)


if __name__ == '__main__':
    sys.exit(main())

"""What a sweep costs over running the same trials by hand, and trials per minute by workers.

    python benchmarks/sweep_overhead.py              # ~1 min on 2 idle cores: 4 trials, 1 round
    python benchmarks/sweep_overhead.py --trials 6 --epochs 2 --rounds 3

Each round runs, in this order:

- **sweep, 1 worker**: ``examples/trainer_main.py --search grid --nb_trials N --workers 1``
  (the digits model, tiny epochs), timed from start to exit;
- **hand loop**: the same N trials (the command lines of that sweep's ``trials.json``) as
  subprocesses one after another in a plain loop, logging into another folder;
- **sweep, 2 workers**: the same sweep with ``--workers 2``.

It prints the wall times, the sweep's overhead over the hand loop (split into the sweep
process's own start and table, read as its wall time minus the trials' ``wall_s``, and the rest
per trial), and trials per minute for the hand loop, 1 and 2 workers. Timings only: nothing is
judged.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, 'examples', 'trainer_main.py')


def sweep(save_path, name, trials, epochs, workers):
    """Wall seconds of one sweep, and the sum of its trials' own wall times."""
    args = [sys.executable, MAIN, '--model_name', 'digits', '--exp_name', name, '--search',
            'grid', '--nb_trials', str(trials), '--workers', str(workers), '--max_nb_epochs',
            str(epochs), '--train_percent_check', '0.2', '--val_percent_check', '0.5',
            '--save_path', save_path]
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, timeout=900)
    wall = time.perf_counter() - start
    with open(os.path.join(save_path, name, 'trials.csv'), newline='') as f:
        rows = list(csv.DictReader(f))
    assert all(r['status'] == 'finished' for r in rows), rows
    return wall, sum(float(r['wall_s']) for r in rows)


def hand_loop(spec, save_path):
    """The sweep's trials, one after another, each logging under ``save_path``."""
    start = time.perf_counter()
    for trial in spec['trials']:
        subprocess.run([sys.executable, spec['script'], *trial['args'],
                        f'--save_path={save_path}'], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=900)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=4)
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=1)
    args = parser.parse_args()
    rounds = args.rounds
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    print(f'{args.trials} trials of digits ({args.epochs} epoch(s), train_percent_check 0.2), '
          f'{rounds} round(s), {cores} cores, load average {os.getloadavg()[0]:.2f}')

    results = {'hand': [], 'w1': [], 'w2': [], 'w1_trials': []}
    for r in range(rounds):
        folder = tempfile.mkdtemp(prefix='sweep_overhead_')
        wall, trials_wall = sweep(folder, f'w1_{r}', args.trials, args.epochs, workers=1)
        results['w1'].append(wall)
        results['w1_trials'].append(trials_wall)
        with open(os.path.join(folder, f'w1_{r}', 'trials.json')) as f:
            spec = json.load(f)
        results['hand'].append(hand_loop(spec, os.path.join(folder, 'hand')))
        results['w2'].append(sweep(folder, f'w2_{r}', args.trials, args.epochs, workers=2)[0])
        print(f"round {r}: hand {results['hand'][-1]:.1f} s, 1 worker {results['w1'][-1]:.1f} "
              f"s, 2 workers {results['w2'][-1]:.1f} s")

    hand, w1, w2 = (statistics.median(results[k]) for k in ('hand', 'w1', 'w2'))
    own = statistics.median(w - t for w, t in zip(results['w1'], results['w1_trials']))
    n = args.trials
    print('\nmedians over the rounds (s):')
    print(f'  hand loop, one after another : {hand:6.1f}  ({hand / n:.2f} s per trial)')
    print(f'  sweep, 1 worker              : {w1:6.1f}  overhead {w1 - hand:+.1f} s '
          f'({(w1 - hand) / hand:+.0%}): the sweep process itself (start, table) {own:.1f} s, '
          f'the rest {(w1 - hand - own) / n:+.2f} s per trial')
    print(f'  sweep, 2 workers             : {w2:6.1f}')
    print(f'trials per minute: hand {60 * n / hand:.1f}, 1 worker {60 * n / w1:.1f}, '
          f'2 workers {60 * n / w2:.1f} (x{w1 / w2:.2f} of 1 worker; {cores} cores)')


if __name__ == '__main__':
    main()

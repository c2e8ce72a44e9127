"""Hyperparameter sweeps: each trial is its own run of your training script.

A sweep re-runs the script that started it once per trial, as a fresh process with the
trial's exact command line: on this machine (up to ``workers`` at a time, each trial pinned to
its own GPU with ``--gpus``) or as one SLURM job per trial. The trials come from test-tube's
``HyperOptArgumentParser`` (``opt_list``/``opt_range`` arguments, grid or random search).
Every trial logs into one experiment folder, with its trial index as its version:

    <save_path>/<name>/
        trials.json          the trial list, written when the sweep starts (read by --resume)
        trials.csv           the table of the trials, written when the sweep ends
        version_<i>/         trial i: the logger's files, checkpoints/, and trial.log (the
                             trial's output, one ``[sweep] start``/``[sweep] exit`` pair per run)
        slurm/trial_<i>.sh   the sbatch script of trial i (--cluster slurm)

The table is read from these files only (``notebook.runs``/``notebook.metrics``,
``run_status.json``, ``trial.log``), so ``trials_table`` works the same for a local sweep, a
SLURM sweep whose jobs are still running, and a sweep that was stopped.

``docs/sweeps.md`` describes every flag and function; ``examples/trainer_main.py`` uses them.
"""
import argparse
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import List, Optional

from . import notebook
from .exceptions import MisconfigurationException
from .loggers.test_tube import read_run_status
from .placement.gpus import parse_gpus
from .utilities.parent import SWEEP_PARENT_ENV

TRIALS_FILE = 'trials.json'
TABLE_FILE = 'trials.csv'
TRIAL_LOG = 'trial.log'
SLURM_FOLDER = 'slurm'
#: After Ctrl-C, how long running trials get to save their logs before they are killed.
STOP_TIMEOUT_S = 60.0
#: How often the local runner looks at its trials.
POLL_S = 0.1
#: Longest wait for ``sbatch`` to answer.
SBATCH_TIMEOUT_S = 120.0
#: The flags ``add_sweep_args`` adds: they steer the sweep and never reach a trial.
SWEEP_DESTS = ('search', 'nb_trials', 'workers', 'resume', 'report', 'sort_by', 'sort_mode',
               'trial_time', 'cluster', 'slurm_partition', 'slurm_time', 'slurm_gpus', 'slurm_nodes',
               'slurm_ntasks_per_node', 'slurm_mem', 'slurm_conda_env', 'slurm_modules',
               'slurm_line', 'slurm_grace')
_STRATEGIES = {'grid': 'grid_search', 'random': 'random_search'}
# the lines the sweep (or the sbatch script) writes into trial.log around each run
_START = re.compile(r'^\[sweep\] start version=')
_EXIT = re.compile(r'^\[sweep\] exit code=(-?\d+) wall_s=([0-9.]+)( stopped| time limit)?\s*$')
# exit codes of a process stopped by SIGINT or SIGTERM (killed by it, or 128 + signal)
_STOP_CODES = {-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}


# ------------------------------------------------------------------------------ arguments
def add_sweep_args(parser):
    """Add the sweep's flags to ``parser`` (an ``argparse``/test-tube parser) and return it.

    Sweep flags: ``--search {grid,random}``, ``--nb_trials``, ``--workers``, ``--resume``,
    ``--report``, ``--sort_by`` (default ``val_loss``), ``--sort_mode {auto,min,max}``,
    ``--trial_time`` (a local trial's time limit), ``--cluster {local,slurm}``; SLURM flags: ``--slurm_partition``, ``--slurm_time``,
    ``--slurm_gpus`` (GPUs per trial), ``--slurm_nodes``, ``--slurm_ntasks_per_node``,
    ``--slurm_mem``, ``--slurm_conda_env``, ``--slurm_modules`` (comma-separated),
    ``--slurm_line`` (an extra ``#SBATCH`` line, repeatable), ``--slurm_grace`` (seconds
    between SIGUSR1 and the end of the job). None of them is passed on to a trial."""
    group = parser.add_argument_group('sweep (pytorch_lightning.sweep)')
    group.add_argument('--search', choices=sorted(_STRATEGIES), default=None,
                       help='run a sweep over the tunable arguments: every grid point, or '
                            '--nb_trials random draws')
    group.add_argument('--nb_trials', type=int, default=None,
                       help='trials to run (grid: the first N points; random: required)')
    group.add_argument('--workers', type=int, default=None,
                       help='trials running at once on this machine (default: 1, or one per '
                            'GPU given with --gpus)')
    group.add_argument('--resume', action='store_true',
                       help='continue the sweep in the experiment folder: finished trials are '
                            'skipped, the others run again from their newest checkpoint')
    group.add_argument('--report', action='store_true',
                       help="only print and write the sweep's table (e.g. while SLURM runs it)")
    group.add_argument('--sort_by', default='val_loss', help='metric the table is sorted by')
    group.add_argument('--sort_mode', choices=('auto', 'min', 'max'), default='auto',
                       help="best is the lowest value (min) or the highest (max); auto: max for "
                            "names containing 'acc', else min")
    group.add_argument('--trial_time', default=None, metavar='[[H:]M:]S',
                       help="time limit of each local trial, e.g. 1:30:00 or 600 (seconds). At "
                            "the limit the trial gets SIGTERM (it saves its logs and checkpoint) "
                            "and is 'timeout' in the table; --resume continues it with a fresh "
                            "limit. On SLURM use --slurm_time")
    group.add_argument('--cluster', choices=('local', 'slurm'), default='local',
                       help='local: run the trials here; slurm: submit one sbatch job per trial')
    slurm = parser.add_argument_group('SLURM (--cluster slurm)')
    slurm.add_argument('--slurm_partition', default=None)
    slurm.add_argument('--slurm_time', default=None, help='time limit per trial, e.g. 02:00:00')
    slurm.add_argument('--slurm_gpus', type=int, default=0, help='GPUs per trial (per node)')
    slurm.add_argument('--slurm_nodes', type=int, default=1)
    slurm.add_argument('--slurm_ntasks_per_node', type=int, default=1)
    slurm.add_argument('--slurm_mem', default=None, help='memory per node, e.g. 16G')
    slurm.add_argument('--slurm_conda_env', default=None, help='conda environment to activate')
    slurm.add_argument('--slurm_modules', default=None, help='modules to load, comma-separated')
    slurm.add_argument('--slurm_line', action=_AppendLine, default=(),
                       help='an extra #SBATCH line, e.g. --slurm_line=--qos=high (repeatable)')
    slurm.add_argument('--slurm_grace', type=int, default=90,
                       help='seconds before the time limit at which SLURM sends SIGUSR1 (the '
                            'trial then checkpoints and requeues itself)')
    return parser


class _AppendLine(argparse.Action):
    """``action='append'`` into a tuple: test-tube's parser hashes every parsed value, and a
    list is not hashable."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, tuple(getattr(namespace, self.dest, None) or ()) + (values,))


def parse_duration(text, flag='--trial_time'):
    """Seconds (a float) from ``text``: seconds (``600``, ``2.5``) or ``[H:]M:S``
    (``1:30:00``, ``10:00``). ``None`` stays ``None``. Anything else, or a limit that is not
    positive, raises ``MisconfigurationException`` naming ``flag``."""
    if text is None:
        return None
    parts = str(text).strip().split(':')
    try:
        if len(parts) > 3 or (len(parts) > 1 and not all(p.isdigit() for p in parts[:-1])):
            raise ValueError
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + float(part)
    except ValueError:
        seconds = None
    if seconds is None or not seconds > 0 or math.isinf(seconds):
        raise MisconfigurationException(
            f'{flag} {text!r}: expected a positive time limit in seconds (600) or as '
            f'[H:]M:S (1:30:00).')
    return seconds


def is_sweep(hparams):
    """Whether the parsed ``hparams`` ask for a sweep (``--search``, ``--resume`` or
    ``--report``) rather than one run."""
    return bool(getattr(hparams, 'search', None) or getattr(hparams, 'resume', False)
                or getattr(hparams, 'report', False))


def trial_hparams(hparams):
    """``hparams`` without the sweep's flags (an ``argparse.Namespace``): what one run logs."""
    return argparse.Namespace(**{k: v for k, v in vars(hparams).items()
                                 if k not in SWEEP_DESTS})


# ------------------------------------------------------------------------------ trials
def _plain(value):
    """numpy scalars (test-tube's opt_range draws) as Python numbers."""
    return value.item() if hasattr(value, 'item') and not isinstance(value, (list, dict)) \
        else value


def _tunable_values(parser):
    """``{dest: [values]}`` of ``parser``'s tunable arguments (``opt_list``/``opt_range`` with
    ``tunable=True``), in the order they were added. test-tube records an ``opt_list`` once
    per flag (``'-lr'`` and ``'--learning_rate'``); the argument counts once, under its
    destination."""
    values = {}
    dests = {a.dest for a in parser._actions}
    for flag, opt in getattr(parser, 'opt_args', {}).items():
        action = parser._option_string_actions.get(flag)
        name = action.dest if action is not None else flag.strip('-').replace('-', '_')
        if opt.tunable and name in dests and name not in values:
            values[name] = list(opt.opt_values)
    return values


def tunable_names(parser):
    """The destinations of ``parser``'s tunable arguments (``opt_list``/``opt_range`` with
    ``tunable=True``), in the order they were added, each once."""
    return list(_tunable_values(parser))


def make_trials(parser, search, nb_trials=None):
    """The trials of a sweep: a list of ``{name: value}`` dicts of the tunable arguments,
    each argument one axis of the grid whatever its number of flags (``grid``: the grid's
    points in order, the last argument varying fastest, the first ``nb_trials`` of them
    when given; ``random``: ``nb_trials`` distinct points, all of them when the grid has
    fewer, drawn with Python's unseeded ``random``). ``parser`` is the test-tube
    ``HyperOptArgumentParser`` that parsed the command line (its ``parse_args`` must have
    run; ``opt_range`` values are those test-tube drew when the parser was built). Raises
    ``MisconfigurationException`` for an unknown search, a random search without
    ``nb_trials``, or a parser without tunable arguments."""
    if search not in _STRATEGIES:
        raise MisconfigurationException(
            f"make_trials(search={search!r}): expected one of {sorted(_STRATEGIES)}.")
    if not hasattr(parser, 'generate_trials') or getattr(parser, 'parsed_args', None) is None:
        raise MisconfigurationException(
            f"make_trials(parser={type(parser).__name__}): expected the test-tube "
            f"HyperOptArgumentParser that parsed the command line (call its parse_args "
            f"first).")
    axes = _tunable_values(parser)
    if not axes:
        raise MisconfigurationException(
            f"--search {search}: the parser has no tunable argument. Add some in "
            f"add_model_specific_args with parser.opt_list(..., tunable=True) or "
            f"parser.opt_range(..., tunable=True).")
    if nb_trials is not None and nb_trials < 1:
        raise MisconfigurationException(
            f"--nb_trials {nb_trials}: expected a number of trials >= 1.")
    if search == 'random' and nb_trials is None:
        raise MisconfigurationException(
            '--search random needs --nb_trials N (how many random points to draw).')
    names, options = list(axes), list(axes.values())
    size = math.prod(len(values) for values in options)
    if search == 'grid':
        indices = range(min(size, nb_trials or size))
    else:  # distinct grid points, by index: the grid itself may be too big to list
        indices = random.sample(range(size), min(size, nb_trials))
    trials = []
    for index in indices:
        point = {}
        for name, values in zip(reversed(names), reversed(options)):  # last varies fastest
            index, position = divmod(index, len(values))
            point[name] = _plain(values[position])
        trials.append({name: point[name] for name in names})
    return trials


def _text(value):
    return str(_plain(value))


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def trial_command(parser, values):
    """The command-line arguments that make ``parser`` parse back exactly ``values`` (a dict
    of argument destinations to values; destinations missing from it, and the sweep's own
    flags, are left out). Flags are written in their long form as ``--name=value`` (so a
    value that starts with ``-`` stays a value), flags without a value (``store_true`` and
    the like) only when set, ``None`` by leaving the flag out.

    The arguments are parsed back with ``parser`` and compared with ``values``; a value that
    does not survive the round trip (``type=bool`` with ``False``, ``None`` where the default
    is not ``None``, a custom type) raises ``MisconfigurationException`` naming the argument."""
    args, checked = [], []
    for action in parser._actions:
        dest = action.dest
        if dest in SWEEP_DESTS or dest not in values or dest == argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        value = _plain(values[dest])
        checked.append(dest)
        if not action.option_strings:  # a positional argument
            items = value if isinstance(value, (list, tuple)) else [value]
            args += [_text(v) for v in items]
            continue
        longs = [s for s in action.option_strings if s.startswith('--')] or action.option_strings
        flag = longs[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            if value is not None:
                args.append(flag if value else '--no-' + flag[2:])
        elif isinstance(action, argparse._CountAction):
            args += [flag] * int(value or 0)
        elif isinstance(action, argparse._AppendAction):
            for item in value or ():
                args.append(f'{flag}={_text(item)}')
        elif action.nargs == 0:  # store_true, store_false, store_const
            if _same(value, action.const):
                args.append(flag)
        elif value is None:
            continue
        elif action.nargs is None or (action.nargs == '?' and not isinstance(value, list)):
            args.append(f'{flag}={_text(value)}')
        else:  # nargs '*', '+', N: a list of values
            args += [flag] + [_text(v) for v in value]
    _check_round_trip(parser, args, values, checked)
    return args


def _check_round_trip(parser, args, values, checked):
    try:
        parsed, _ = argparse.ArgumentParser.parse_known_args(parser, args)
    except SystemExit:  # argparse prints the reason to stderr
        raise MisconfigurationException(
            f"trial_command: the script's parser rejects the trial's arguments {args}; see "
            f"the usage message above.") from None
    for dest in checked:
        want, got = _plain(values[dest]), _plain(getattr(parsed, dest, None))
        if not _same(want, got):
            raise MisconfigurationException(
                f"trial_command: the argument {dest!r} = {want!r} does not survive the command "
                f"line (it parses back as {got!r}). Give it a type that parses its own str() "
                f"(not type=bool; use action='store_true'), or a default that is not None.")


def gpu_ids(gpus, device_count=None, visible=None):
    """The GPUs a local sweep spreads its trials over, as ``CUDA_VISIBLE_DEVICES`` values
    (strings), or ``None`` for the CPU. ``gpus`` takes the Trainer's forms (``'0,1'`` ids,
    ``'2'`` a count, ``'-1'`` all). When this process runs under ``CUDA_VISIBLE_DEVICES``
    (``visible``; ``None`` reads the environment) the ids count within it and the physical
    names are returned, so a trial sees exactly its own GPU. ``device_count``: how many GPUs
    exist (``None`` asks torch); raises ``MisconfigurationException`` like ``Trainer(gpus=)``."""
    ids = parse_gpus(gpus, device_count)
    if ids is None:
        return None
    visible = os.environ.get('CUDA_VISIBLE_DEVICES') if visible is None else visible
    names = [v.strip() for v in (visible or '').split(',') if v.strip()]
    return [names[i] if i < len(names) else str(i) for i in ids] if names \
        else [str(i) for i in ids]


# ------------------------------------------------------------------------------ trials.json
def trial_log(exp_dir, version):
    """Path of trial ``version``'s output log (``version_<i>/trial.log``)."""
    return os.path.join(os.fspath(exp_dir), f'version_{version}', TRIAL_LOG)


def _write_json(path, data):
    with open(path + '.tmp', 'w') as f:
        json.dump(data, f, indent=1)
    os.replace(path + '.tmp', path)


def write_trials(exp_dir, spec):
    """Write ``spec`` (the sweep's record: script, placement and trials) as ``trials.json``."""
    os.makedirs(exp_dir, exist_ok=True)
    _write_json(os.path.join(exp_dir, TRIALS_FILE), spec)


def read_trials(exp_dir):
    """The record ``trials.json`` holds: ``{'script', 'cwd', 'search', 'cluster', 'gpus',
    'workers', 'slurm', 'trial_time_s', 'trials': [{'version', 'hparams', 'args'}, ...]}``. Raises
    ``MisconfigurationException`` when the folder has no sweep."""
    path = os.path.join(os.fspath(exp_dir), TRIALS_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise MisconfigurationException(
            f"--resume/--report: {path} does not exist, so there is no sweep in "
            f"{os.fspath(exp_dir)!r}. Start one with --search grid or --search random (same "
            f"--save_path and experiment name), or name the experiment folder of an existing "
            f"sweep.") from None


# ------------------------------------------------------------------------------ trial.log
@dataclass
class TrialLog:
    """What ``trial.log`` says about a trial's runs."""
    runs: int = 0                   # '[sweep] start' lines
    exit_code: Optional[int] = None  # of the last run, None when it has not ended
    stopped: bool = False           # the last run was stopped by the sweep (Ctrl-C)
    timed_out: bool = False         # ... or at its --trial_time limit
    wall_s: Optional[float] = None  # seconds, summed over the runs that ended
    last_lines: List[str] = field(default_factory=list)  # the last run's output


def read_trial_log(path, keep=40):
    """Parse ``trial.log`` (missing: an empty ``TrialLog``). ``last_lines``: up to ``keep``
    lines of the last run's output (carriage-return redraws split into lines)."""
    try:
        with open(path, errors='replace') as f:
            text = f.read()
    except FileNotFoundError:
        return TrialLog()
    log, walls, current = TrialLog(), [], []
    for line in re.split(r'[\r\n]+', text):
        if _START.match(line):
            log.runs += 1
            log.exit_code, log.stopped, log.timed_out, current = None, False, False, []
            continue
        match = _EXIT.match(line)
        if match:
            log.exit_code = int(match.group(1))
            log.stopped = match.group(3) == ' stopped'
            log.timed_out = match.group(3) == ' time limit'
            walls.append(float(match.group(2)))
            continue
        if line.strip():
            current.append(line)
    log.wall_s = sum(walls) if walls else None
    log.last_lines = current[-keep:] if keep else []
    return log


def error_of(lines):
    """The error a run's output ends with: the exception line(s) of the last Python traceback
    (``NonFiniteLossError: ...``), else the last line. ``''`` for no output."""
    starts = [i for i, line in enumerate(lines) if line.startswith('Traceback (most recent')]
    if starts:
        after = [line for line in lines[starts[-1] + 1:] if not line.startswith((' ', '\t'))]
        found = [line for line in after if not line.startswith('[sweep]')]
        if found:
            return ' '.join(found)[:500]
    return lines[-1][:500] if lines else ''


def trial_status(run_status, log):
    """A trial's status from its ``run_status.json`` (``run_status``: what
    ``read_run_status`` reads, or ``None``) and its ``TrialLog``: 'finished', 'failed',
    'interrupted', 'timeout' (the sweep stopped it at its ``--trial_time``, before it
    finished), 'running', 'died' (no exit was recorded and the logger's 'running' names
    a process on this host that is gone: killed together with the sweep) or 'pending'
    (never started). An exit code the sweep recorded wins over 'died' (a SIGKILL is then
    'failed'). A run the logger recorded as finished stays finished when the sweep stopped
    its process afterwards (it was ending); a script that fails after a finished ``fit`` is
    'failed'."""
    code = log.exit_code
    if code is None:  # the last run has not ended (or no run started)
        if run_status is None:
            return 'running' if log.runs else 'pending'
        return run_status
    if log.timed_out and run_status != 'finished':
        return 'timeout'
    stopped = log.stopped or code in _STOP_CODES
    if code == 0 or (stopped and run_status == 'finished'):
        return run_status if run_status in ('failed', 'interrupted') else 'finished'
    if stopped or run_status == 'interrupted':
        return 'interrupted'
    return 'failed'


def _needs_run(exp_dir, trial, cluster):
    """Whether ``--resume`` runs ``trial`` again: not when it finished, nor when its logger
    recorded a finished run (running it again would add a second run to that version), nor,
    on SLURM, while its job is running (a 'died' trial runs again: its process is gone)."""
    log_dir = os.path.join(exp_dir, f"version_{trial['version']}")
    run_status = read_run_status(log_dir)
    status = trial_status(run_status, read_trial_log(trial_log(exp_dir, trial['version']), 0))
    if status == 'finished' or run_status == 'finished':
        return False
    return not (status == 'running' and cluster == 'slurm')


# ------------------------------------------------------------------------------ the table
def _mode(metric, mode):
    if mode == 'auto':
        return 'max' if 'acc' in metric.lower() else 'min'
    if mode not in ('min', 'max'):
        raise MisconfigurationException(
            f"sort_mode={mode!r}: expected 'auto', 'min' or 'max'.")
    return mode


def trials_table(exp_dir, metric='val_loss', mode='auto'):
    """The sweep's table, read from the experiment folder: a pandas DataFrame, one row per
    trial of ``trials.json``. Columns: ``version``; one per tuned hyperparameter; ``status``
    (see ``trial_status``); ``<metric>_best`` and ``<metric>_final`` (best by ``mode``,
    NaN values ignored, and the last value of ``metric`` logged in metrics.csv, NaN when that
    was NaN, as ``notebook.runs``' ``<metric>_last``); ``epochs``; ``wall_s`` (seconds the
    trial's processes ran, over all its runs); ``best_checkpoint``; ``error`` (failed trials:
    the exception their output ends with); ``log_dir``. Sorted: finished trials first, each
    group by ``<metric>_best`` (best first, missing values last), then by version."""
    import pandas as pd
    mode = _mode(metric, mode)
    exp_dir = os.path.abspath(os.fspath(exp_dir))
    spec = read_trials(exp_dir)
    save_path, name = os.path.split(exp_dir)
    runs = notebook.runs(save_path, name)
    by_version = {int(r['version']): r for r in runs.to_dict('records')} if len(runs) else {}
    tuned = []
    for trial in spec['trials']:
        tuned += [k for k in trial['hparams'] if k not in tuned]
    best_col, final_col = f'{metric}_best', f'{metric}_final'
    rows = []
    for trial in spec['trials']:
        version = trial['version']
        log_dir = os.path.join(exp_dir, f'version_{version}')
        run = by_version.get(version, {})
        log = read_trial_log(trial_log(exp_dir, version))
        status = trial_status(read_run_status(log_dir), log)
        values = _metric_values(log_dir, metric)
        best = (min(values) if mode == 'min' else max(values)) if values else math.nan
        final = run.get(f'{metric}_last')  # the last value logged, NaN included
        epochs = run.get('epochs')
        rows.append({'version': version, **trial['hparams'], 'status': status,
                     best_col: best, final_col: math.nan if final is None else float(final),
                     'epochs': None if epochs is None or epochs != epochs else int(epochs),
                     'wall_s': None if log.wall_s is None else round(log.wall_s, 1),
                     'best_checkpoint': run.get('best_checkpoint'),
                     'error': error_of(log.last_lines) if status == 'failed' else '',
                     'log_dir': log_dir})
    columns = ['version', *tuned, 'status', best_col, final_col, 'epochs', 'wall_s',
               'best_checkpoint', 'error', 'log_dir']
    frame = pd.DataFrame(rows, columns=columns)
    if len(frame):
        frame['epochs'] = frame['epochs'].astype('Int64')
        key = frame[best_col] if mode == 'min' else -frame[best_col]
        order = pd.DataFrame({'unfinished': frame['status'] != 'finished', 'key': key,
                              'version': frame['version']})
        frame = frame.loc[order.sort_values(['unfinished', 'key', 'version'],
                                            na_position='last').index].reset_index(drop=True)
    return frame


def _metric_values(log_dir, metric):
    frame = notebook.metrics(log_dir)
    if metric not in frame.columns:
        return []
    values = [float(v) for v in frame[metric].dropna()]
    return [v for v in values if not math.isnan(v)]


def write_table(table, exp_dir, metric='val_loss', out=None):
    """Write ``table`` as ``trials.csv`` in ``exp_dir`` and print a compact copy (paths
    relative to ``exp_dir``, errors shortened) to ``out`` (default ``sys.stdout``). Returns
    the CSV's path."""
    out = sys.stdout if out is None else out
    path = os.path.join(os.fspath(exp_dir), TABLE_FILE)
    table.to_csv(path + '.tmp', index=False)
    os.replace(path + '.tmp', path)
    shown = table.drop(columns=['log_dir'])
    shown['best_checkpoint'] = [os.path.relpath(p, exp_dir) if isinstance(p, str) else ''
                                for p in shown['best_checkpoint']]
    shown['error'] = [e if len(e) <= 80 else e[:77] + '...' for e in shown['error']]
    if len(table) and table[f'{metric}_best'].isna().all():
        print(f"[sweep] no trial logged {metric!r}: the table is not sorted by it (name "
              f"another metric with --sort_by).", file=out)
    print(shown.to_string(index=False), file=out)
    print(f'[sweep] table written to {path}', file=out)
    return path


# ------------------------------------------------------------------------------ local runs
class GpuPool:
    """The GPUs of a local sweep: each is lent to at most one running trial at a time."""

    def __init__(self, ids):
        self.free = list(ids)
        self.lent = {}

    def take(self, owner):
        """A free GPU for ``owner`` (taken off the free list), or ``None`` when all are lent."""
        if not self.free:
            return None
        gpu = self.free.pop(0)
        self.lent[owner] = gpu
        return gpu

    def give_back(self, owner):
        """``owner``'s GPU is free again (nothing happens for an owner without one)."""
        gpu = self.lent.pop(owner, None)
        if gpu is not None:
            self.free.append(gpu)


def trial_env(threads, gpu=None, base=None):
    """The environment of a local trial: ``base`` (default ``os.environ``) with torch's CPU
    threads (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``: torch reads them at startup), unbuffered
    output, and with ``gpu`` only that GPU visible (``CUDA_VISIBLE_DEVICES``). It names this
    process as the trial's sweep (``SWEEP_PARENT_ENV``): a trial whose sweep dies ends itself
    (``utilities.parent.watch_sweep_parent``)."""
    env = dict(os.environ if base is None else base)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED='1')
    env[SWEEP_PARENT_ENV] = str(os.getpid())
    if gpu is not None:
        env['CUDA_VISIBLE_DEVICES'] = str(gpu)
    return env


class _StopRequests:
    """SIGINT/SIGTERM while the runner runs: counted, not raised, so the runner decides
    when to stop (it is never interrupted halfway through starting a trial)."""

    def __init__(self):
        self.count, self.signum, self._previous = 0, None, {}

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.count += 1
        self.signum = self.signum or signum

    def uninstall(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


class _Running:
    def __init__(self, trial, proc, gpu, log_path):
        self.trial, self.proc, self.gpu, self.log_path = trial, proc, gpu, log_path
        self.start = time.monotonic()
        self.stopped = False  # False, or why the sweep stopped it: 'stopped' / 'time limit'
        self.kill_at = None  # stopped at its time limit: killed if still running then


def run_local(exp_dir, spec, trials, workers=1, gpus=None, threads=None,
              stop_timeout_s=STOP_TIMEOUT_S, popen=subprocess.Popen, out=None,
              time_limit_s=None):
    """Run ``trials`` (entries of ``spec['trials']``) as subprocesses of this process, at most
    ``workers`` at a time and, with ``gpus`` (a list of ``CUDA_VISIBLE_DEVICES`` names), each
    on a GPU no other running trial has. Each trial runs ``python <spec['script']> <args>`` in
    ``spec['cwd']``, in its own session, with ``threads`` torch threads (default: this
    machine's cores // workers), its output appended to its ``trial.log``.

    SIGINT or SIGTERM to this process stops the sweep: no new trial starts, the running ones
    get the same signal (the library saves their logs and checkpoints) and up to
    ``stop_timeout_s`` seconds to end; a second signal, or the timeout, kills them. Returns
    ``True`` when the sweep was stopped this way, ``False`` when every trial ran.

    ``time_limit_s``: a trial running this long gets SIGTERM (its process group), and SIGKILL
    if it still runs ``stop_timeout_s`` later; its exit line says ``time limit``."""
    out = sys.stdout if out is None else out
    if workers < 1:
        raise MisconfigurationException(f'--workers {workers}: expected at least 1.')
    pool = None if gpus is None else GpuPool(gpus)
    if pool is not None and workers > len(gpus):
        print(f'[sweep] {workers} workers but {len(gpus)} GPUs: at most {len(gpus)} trials '
              f'run at once (one per GPU).', file=out)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    threads = threads or max(1, (cores or 1) // workers)
    queue, running = deque(trials), {}
    requests = _StopRequests().install()

    def launch(trial, gpu):
        version = trial['version']
        path = trial_log(exp_dir, version)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        command = [sys.executable, spec['script'], *trial['args']]
        with open(path, 'a') as log:
            where = f' on GPU {gpu}' if gpu is not None else ''
            log.write(f"[sweep] start version={version} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
                      f"{where}: {shlex.join(command)}\n")
            log.flush()
            proc = popen(command, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, cwd=spec.get('cwd') or None,
                         env=trial_env(threads, gpu), start_new_session=True)
        print(f'[sweep] version {version} started{where}: {trial["hparams"]}', file=out)
        return _Running(trial, proc, gpu, path)

    def reap():
        for version, run in list(running.items()):
            code = run.proc.poll()
            if code is None:
                continue
            del running[version]
            if pool is not None:
                pool.give_back(version)
            wall = time.monotonic() - run.start
            with open(run.log_path, 'a') as log:
                log.write(f"\n[sweep] exit code={code} wall_s={wall:.1f}"
                          f"{' ' + run.stopped if run.stopped else ''}\n")
            status = trial_status(read_run_status(os.path.dirname(run.log_path)),
                                  read_trial_log(run.log_path, keep=0))
            print(f'[sweep] version {version} {status} (exit code {code}, {wall:.1f} s)',
                  file=out)

    try:
        while (queue or running) and not requests.count:
            while queue and len(running) < workers:
                gpu = None
                if pool is not None:
                    gpu = pool.take(queue[0]['version'])
                    if gpu is None:
                        break
                trial = queue.popleft()
                running[trial['version']] = launch(trial, gpu)
            time.sleep(POLL_S)
            reap()
            if time_limit_s is not None:
                _enforce_time_limit(running.values(), time_limit_s, stop_timeout_s, out)
    finally:
        if running:
            signum = requests.signum or signal.SIGINT
            if requests.count:
                print(f'[sweep] stopping: {signal.Signals(signum).name} to {len(running)} '
                      f'running trial(s); waiting up to {stop_timeout_s:.0f} s (signal again '
                      f'to kill them now)', file=out)
            _stop(running, signum, stop_timeout_s, requests, reap)
        requests.uninstall()
    return bool(requests.count)


def _enforce_time_limit(runs, limit_s, stop_timeout_s, out):
    """SIGTERM to each trial that reached ``limit_s``; SIGKILL to one that outlived the
    ``stop_timeout_s`` it then had."""
    now = time.monotonic()
    for run in runs:
        if not run.stopped and now - run.start >= limit_s:
            run.stopped, run.kill_at = 'time limit', now + stop_timeout_s
            print(f"[sweep] version {run.trial['version']} reached its time limit "
                  f"({limit_s:g} s): SIGTERM (it saves its logs and checkpoint)", file=out)
            _signal_group(run.proc, signal.SIGTERM)
        elif run.kill_at is not None and now >= run.kill_at:
            run.kill_at = None
            _signal_group(run.proc, signal.SIGKILL)


def _signal_group(proc, signum):
    """``signum`` to a trial's process group (the trial and its DataLoader workers), as a
    terminal's Ctrl-C would send it."""
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(running, signum, timeout_s, requests, reap):
    signals_seen = requests.count
    for run in running.values():
        run.stopped = run.stopped or 'stopped'
        _signal_group(run.proc, signum)
    deadline = time.monotonic() + timeout_s
    while running and time.monotonic() < deadline and requests.count <= signals_seen:
        time.sleep(POLL_S)
        reap()
    for run in list(running.values()):
        _signal_group(run.proc, signal.SIGKILL)
        try:
            run.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass  # unkillable (uninterruptible IO): reported as still running
    reap()


# ------------------------------------------------------------------------------ SLURM
@dataclass
class SlurmOptions:
    """What each trial's sbatch script asks SLURM for (see ``add_sweep_args``)."""
    partition: Optional[str] = None
    time: Optional[str] = None
    gpus: int = 0
    nodes: int = 1
    ntasks_per_node: int = 1
    mem: Optional[str] = None
    conda_env: Optional[str] = None
    modules: List[str] = field(default_factory=list)
    extra_lines: List[str] = field(default_factory=list)
    grace_s: int = 90

    @classmethod
    def from_hparams(cls, hparams):
        modules = getattr(hparams, 'slurm_modules', None) or ''
        return cls(partition=hparams.slurm_partition, time=hparams.slurm_time,
                   gpus=hparams.slurm_gpus, nodes=hparams.slurm_nodes,
                   ntasks_per_node=hparams.slurm_ntasks_per_node, mem=hparams.slurm_mem,
                   conda_env=hparams.slurm_conda_env,
                   modules=[m.strip() for m in modules.split(',') if m.strip()],
                   extra_lines=list(hparams.slurm_line or []), grace_s=hparams.slurm_grace)

    def check(self):
        """Raise ``MisconfigurationException`` for a value that cannot go into a script."""
        for name, value in vars(self).items():
            items = value if isinstance(value, list) else [value]
            if any(isinstance(v, str) and ('\n' in v or '\r' in v) for v in items):
                raise MisconfigurationException(
                    f"--slurm_{name}: {value!r} contains a line break; give one line per "
                    f"value (repeat --slurm_line for several #SBATCH lines).")
        for name in ('nodes', 'ntasks_per_node'):
            if getattr(self, name) < 1:
                raise MisconfigurationException(
                    f'--slurm_{name} {getattr(self, name)}: expected at least 1.')
        if self.gpus < 0 or self.grace_s < 0:
            raise MisconfigurationException(
                f'--slurm_gpus {self.gpus} / --slurm_grace {self.grace_s}: expected >= 0.')


def slurm_script(exp_dir, spec, trial, options):
    """The text of trial ``trial``'s sbatch script: ``#SBATCH`` lines for the options (the job
    name and the log path shell-quoted when they hold spaces), the trial's output appended to
    its ``trial.log``, ``--signal=USR1@<grace>`` (sent to the job
    steps, where the library checkpoints and requeues), modules and conda environment, then
    ``srun -K`` running the trial's exact command line, between the ``[sweep] start`` and
    ``[sweep] exit`` lines ``trials_table`` reads."""
    version = trial['version']
    name = os.path.basename(os.path.normpath(exp_dir))
    # sbatch splits #SBATCH lines into words as a shell would (quotes group, # comments):
    # the paths are quoted so a folder name with spaces stays one word
    lines = ['#!/bin/bash',
             f'#SBATCH --job-name={shlex.quote(f"{name}-v{version}")}',
             f'#SBATCH --output={shlex.quote(trial_log(exp_dir, version))}',
             '#SBATCH --open-mode=append',
             f'#SBATCH --nodes={options.nodes}',
             f'#SBATCH --ntasks-per-node={options.ntasks_per_node}']
    if options.partition:
        lines.append(f'#SBATCH --partition={options.partition}')
    if options.time:
        lines.append(f'#SBATCH --time={options.time}')
    if options.mem:
        lines.append(f'#SBATCH --mem={options.mem}')
    if options.gpus:
        lines.append(f'#SBATCH --gres=gpu:{options.gpus}')
    lines += [f'#SBATCH --signal=USR1@{options.grace_s}', '#SBATCH --requeue']
    lines += [line if line.startswith('#SBATCH') else f'#SBATCH {line}'
              for line in options.extra_lines]
    lines += ['', f'# trial {version} of the sweep in {exp_dir} '
                  f'(written by pytorch_lightning.sweep)']
    if options.modules:
        lines.append('module load ' + ' '.join(shlex.quote(m) for m in options.modules))
    if options.conda_env:
        lines += ['eval "$(conda shell.bash hook)"',
                  f'conda activate {shlex.quote(options.conda_env)}']
    # with an environment to activate, its python runs the trial; else this sweep's python
    python = 'python' if options.modules or options.conda_env else sys.executable
    command = shlex.join([python, spec['script'], *trial['args']])
    lines += [f"cd {shlex.quote(spec.get('cwd') or os.getcwd())}",
              f'echo "[sweep] start version={version} job=$SLURM_JOB_ID at $(date)"',
              f'srun -K {command}',
              'code=$?',
              'echo "[sweep] exit code=$code wall_s=$SECONDS"',
              'exit $code', '']
    return '\n'.join(lines)


class SubmissionError(RuntimeError):
    """``sbatch`` refused a trial's script; the message names what was submitted before."""


def submit_slurm(exp_dir, spec, trials, options, out=None):
    """Write ``slurm/trial_<i>.sh`` for each of ``trials`` and submit it with ``sbatch
    --parsable`` (found on ``PATH``). Returns ``{version: job id}`` and records the job ids
    in ``trials.json`` (``slurm_jobs`` of each trial). Raises
    ``MisconfigurationException`` when ``sbatch`` is not on ``PATH`` (before writing
    anything), ``SubmissionError`` when it fails for a trial."""
    out = sys.stdout if out is None else out
    options.check()
    sbatch = _sbatch()
    folder = os.path.join(exp_dir, SLURM_FOLDER)
    os.makedirs(folder, exist_ok=True)
    jobs = {}
    for trial in trials:
        version = trial['version']
        os.makedirs(os.path.join(exp_dir, f'version_{version}'), exist_ok=True)
        path = os.path.join(folder, f'trial_{version}.sh')
        with open(path, 'w') as f:
            f.write(slurm_script(exp_dir, spec, trial, options))
        os.chmod(path, 0o755)
        try:
            result = subprocess.run([sbatch, '--parsable', path], capture_output=True,
                                    text=True, timeout=SBATCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            result = None
        if result is None or result.returncode != 0 or not result.stdout.strip():
            why = ('no answer within %.0f s' % SBATCH_TIMEOUT_S if result is None else
                   f'exit {result.returncode}: {(result.stderr or result.stdout).strip()}')
            done = ', '.join(f'version {v} (job {j})' for v, j in jobs.items()) or 'none'
            _record_jobs(exp_dir, spec, jobs)
            raise SubmissionError(
                f'sbatch {path} failed ({why}). Submitted before it: {done}. Fix the SLURM '
                f'options and run the same command with --resume to submit the rest.')
        jobs[version] = result.stdout.strip().split(';')[0]
        print(f'[sweep] version {version} submitted as job {jobs[version]}: '
              f'{trial["hparams"]}', file=out)
    _record_jobs(exp_dir, spec, jobs)
    return jobs


def _sbatch():
    sbatch = shutil.which('sbatch')
    if sbatch is None:
        raise MisconfigurationException(
            '--cluster slurm: `sbatch` is not on PATH. Run the sweep on a SLURM login node '
            '(or load the slurm module first), or use --cluster local.')
    return sbatch


def _record_jobs(exp_dir, spec, jobs):
    for trial in spec['trials']:
        if trial['version'] in jobs:
            trial.setdefault('slurm_jobs', []).append(jobs[trial['version']])
    write_trials(exp_dir, spec)


# ------------------------------------------------------------------------------ the CLI glue
@dataclass
class SweepResult:
    """What ``run_sweep`` did: the experiment folder, the table (``None`` after a SLURM
    submission), whether Ctrl-C stopped it, and the SLURM job ids by version."""
    exp_dir: str
    table: object = None
    interrupted: bool = False
    jobs: dict = field(default_factory=dict)

    @property
    def exit_code(self):
        """For a command line: 130 when interrupted, 1 when a trial failed or died, else 0."""
        if self.interrupted:
            return 130
        if self.table is not None and self.table['status'].isin(('failed', 'died')).any():
            return 1
        return 0


def run_sweep(parser, hparams, script, exp_dir, out=None, stop_timeout_s=STOP_TIMEOUT_S):
    """Run the sweep the command line asks for (``is_sweep(hparams)`` is true) and return a
    ``SweepResult``.

    ``parser``: the test-tube parser that parsed ``hparams`` (it needs ``add_sweep_args``'s
    flags and a ``--version`` argument that the script passes to its logger); ``script``:
    the training script each trial runs; ``exp_dir``: the experiment folder the trials log
    into (``<save_path>/<name>``).

    - ``--search``: the trials are generated (``make_trials``), each one's command line is
      built (``trial_command``: this command's arguments, the trial's values, ``--version=<i>``
      and, on GPUs, ``--gpus=1`` or ``--gpus=<slurm_gpus>``) and written to ``trials.json``;
      then they run here (``run_local``) or are submitted (``submit_slurm``).
    - ``--resume``: ``trials.json`` is read back and every trial that has not finished runs
      again with its recorded command line and placement; finished trials are skipped.
    - ``--report``: only the table.

    The table (``trials_table``) is printed and written to ``trials.csv`` at the end, also
    when Ctrl-C stopped the sweep."""
    out = sys.stdout if out is None else out
    exp_dir = os.path.abspath(os.fspath(exp_dir))
    metric, mode = hparams.sort_by, hparams.sort_mode
    _mode(metric, mode)
    if hparams.workers is not None and hparams.workers < 1:
        raise MisconfigurationException(
            f'--workers {hparams.workers}: expected at least 1 (trials running at once).')
    if hparams.report:
        return _finish(SweepResult(exp_dir), metric, mode, out)
    if hparams.resume:
        spec = read_trials(exp_dir)
        todo = [t for t in spec['trials'] if _needs_run(exp_dir, t, spec['cluster'])]
        print(f"[sweep] resuming {exp_dir}: {len(spec['trials']) - len(todo)} trial(s) "
              f"finished or running are skipped, {len(todo)} run again.", file=out)
    else:
        spec = _new_sweep(parser, hparams, script, exp_dir, out)
        todo = spec['trials']
    if spec['cluster'] == 'slurm':
        _time_limit(hparams, 'slurm')  # refused
        options = SlurmOptions(**spec['slurm'])
        jobs = submit_slurm(exp_dir, spec, todo, options, out=out)
        print(f'[sweep] {len(jobs)} job(s) submitted. The table, once they ran: the same '
              f'command with --report instead of --search.', file=out)
        return SweepResult(exp_dir, jobs=jobs)
    workers = hparams.workers or spec['workers'] or (len(spec['gpus']) if spec['gpus'] else 1)
    time_limit_s = _time_limit(hparams, 'local') or spec.get('trial_time_s')
    interrupted = run_local(exp_dir, spec, todo, workers=workers, gpus=spec['gpus'],
                            stop_timeout_s=stop_timeout_s, out=out, time_limit_s=time_limit_s)
    result = _finish(SweepResult(exp_dir, interrupted=interrupted), metric, mode, out)
    if interrupted:
        print('[sweep] stopped. Run the same command with --resume to continue.', file=out)
    return result


def _time_limit(hparams, cluster):
    """``--trial_time`` in seconds (``None`` when not given); refused on SLURM."""
    text = getattr(hparams, 'trial_time', None)
    if text is not None and cluster == 'slurm':
        raise MisconfigurationException(
            f"--trial_time {text} limits local trials; a SLURM trial has its job's limit: "
            f"pass --slurm_time instead (the trial then checkpoints and requeues itself when "
            f"the limit nears).")
    return parse_duration(text)


def _finish(result, metric, mode, out):
    result.table = trials_table(result.exp_dir, metric, mode)
    write_table(result.table, result.exp_dir, metric, out=out)
    return result


def _new_sweep(parser, hparams, script, exp_dir, out):
    """Generate the trials, build their command lines and write trials.json."""
    if not any(a.dest == 'version' for a in parser._actions):
        raise MisconfigurationException(
            "run_sweep: the script's parser has no --version argument. Add "
            "parser.add_argument('--version', type=int, default=None) and pass it to "
            "TestTubeLogger(save_dir, name, version=hparams.version): each trial logs into "
            "the version given by its index.")
    cluster = hparams.cluster
    time_limit_s = _time_limit(hparams, cluster)
    trials = make_trials(parser, hparams.search, hparams.nb_trials)
    taken = [v for v in range(len(trials))
             if os.path.exists(os.path.join(exp_dir, f'version_{v}'))]
    if os.path.exists(os.path.join(exp_dir, TRIALS_FILE)) or taken:
        raise MisconfigurationException(
            f"the experiment folder {exp_dir!r} already holds "
            f"{'a sweep (trials.json)' if not taken else f'version_{taken[0]}'}: a new sweep "
            f"would write into those versions. Pass --resume to continue that sweep, or "
            f"another experiment name or --save_path for a new one.")
    gpus, slurm = None, None
    base = {k: v for k, v in vars(hparams).items() if k not in SWEEP_DESTS}
    gpus_action = next((a for a in parser._actions if a.dest == 'gpus'), None)
    # a trial's GPU count, as the script's --gpus parses it (a string, or an int with type=int)
    as_gpus = gpus_action.type if gpus_action is not None and callable(gpus_action.type) \
        else str
    if cluster == 'slurm':
        options = SlurmOptions.from_hparams(hparams)
        options.check()
        _sbatch()  # before anything is written
        slurm = vars(options)
        if gpus_action is not None:
            base['gpus'] = as_gpus(str(options.gpus)) if options.gpus else None
    elif gpus_action is not None and hparams.gpus is not None:
        gpus = gpu_ids(hparams.gpus)
        if gpus is not None:
            base['gpus'] = as_gpus('1')  # each trial sees exactly one GPU: its own
    spec = {'script': os.path.abspath(script), 'cwd': os.getcwd(), 'search': hparams.search,
            'cluster': cluster, 'gpus': gpus, 'workers': hparams.workers, 'slurm': slurm,
            'trial_time_s': time_limit_s,
            'created_at': time.strftime('%Y-%m-%d %H:%M:%S'), 'trials': []}
    for version, values in enumerate(trials):
        args = trial_command(parser, {**base, **values, 'version': version})
        spec['trials'].append({'version': version, 'hparams': values, 'args': args})
    write_trials(exp_dir, spec)
    print(f"[sweep] {len(trials)} trial(s) ({hparams.search} search over "
          f"{', '.join(tunable_names(parser))}) in {exp_dir}", file=out)
    return spec

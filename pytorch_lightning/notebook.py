"""Helpers for comparing runs in a notebook: read what the logger wrote to disk.

Every helper reads the files of a version folder (``<save_path>/<name>/version_<n>``) and
nothing else, so it works on finished runs and on runs still writing (a half-written last
line of ``metrics.csv`` is skipped). pandas and matplotlib are imported inside the functions
that need them, so ``import pytorch_lightning`` stays cheap.
"""
import csv
import math
import os
import re

from . import checkpoint_io
from .exceptions import MisconfigurationException
from .hparams import load_hparams_file, read_tags_csv
from .loggers.test_tube import read_run_status
from .utilities import parse_cell

#: Bookkeeping columns of metrics.csv: not metrics, never summarised by ``runs``.
INDEX_COLUMNS = ('epoch', 'step', 'global_step', 'created_at')
#: The file the logger writes the run's status to, in the version folder.
#: ModelCheckpoint's best-file names end with ``step=<s>-<metric>=<value>.ckpt``.
_CKPT_VALUE = re.compile(r'step=\d+-(?P<key>.+)=(?P<value>[^=]*)\.ckpt$')


# ------------------------------------------------------------------------------ reading
def _mode(metric):
    """'max' for names containing 'acc' (accuracies), 'min' for everything else: the rule
    ModelCheckpoint and EarlyStopping use with ``mode='auto'``."""
    return 'max' if 'acc' in metric.lower() else 'min'


def _cell(text):
    """A metrics.csv cell as the int, float or string it was written from; '' is None."""
    return None if text == '' else parse_cell(text)


def _read_rows(log_dir):
    """``(header, rows)`` of ``log_dir/metrics.csv``, each row a list of parsed cells.

    A run may be writing the file now: a last line without its newline is still being
    written and is dropped, and so is any row with more or fewer fields than the header.
    A missing file gives ``([], [])``."""
    path = os.path.join(os.fspath(log_dir), 'metrics.csv')
    try:
        with open(path, newline='') as f:
            text = f.read()
    except FileNotFoundError:
        return [], []
    if text and not text.endswith('\n'):
        text = text[:text.rfind('\n') + 1]
    try:
        lines = list(csv.reader(text.splitlines()))
    except csv.Error:  # a broken quote: read line by line and keep what parses
        lines = []
        for line in text.splitlines():
            try:
                lines += list(csv.reader([line]))
            except csv.Error:
                continue
    if not lines:
        return [], []
    header = lines[0]
    rows = [[_cell(c) for c in line] for line in lines[1:] if len(line) == len(header)]
    return header, rows


def _hparams(log_dir):
    """The run's hyperparameters as a dict: ``hparams.json`` when present (types intact),
    else ``meta_tags.csv``, else ``{}``."""
    record = load_hparams_file(log_dir)
    if record is not None:
        return dict(record['values'])
    tags = os.path.join(os.fspath(log_dir), 'meta_tags.csv')
    return read_tags_csv(tags) if os.path.isfile(tags) else {}


def _checkpoints(log_dir):
    folder = os.path.join(os.fspath(log_dir), 'checkpoints')
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith('.ckpt'))


def _best_checkpoint(log_dir):
    """The best checkpoint of a run, or ``None`` when it has none.

    Candidates are the ``*.ckpt`` files in ``checkpoints/`` other than ``*last.ckpt`` and
    ``hpc_ckpt_*`` (ModelCheckpoint's best-by-metric files). Among those whose name ends with
    ``-<metric>=<value>.ckpt`` the best value wins, in the mode the run's ModelCheckpoint
    used (``_recorded_modes``; without a record, max for names containing 'acc', else min);
    candidates without a readable value count only when no file has one (the newest wins);
    with no candidate at all, ``last.ckpt``; without that, the newest ``hpc_ckpt_<n>.ckpt``
    (a SLURM job preempted before its first epoch ended)."""
    paths = _checkpoints(log_dir)
    candidates = [p for p in paths if not os.path.basename(p).endswith('last.ckpt')
                  and not os.path.basename(p).startswith('hpc_ckpt_')]
    modes = _recorded_modes(paths) if candidates else {}
    scored = []
    for path in candidates:
        match = _CKPT_VALUE.search(os.path.basename(path))
        value = _cell(match.group('value')) if match else None
        if isinstance(value, (int, float)) and not math.isnan(value):
            key = match.group('key')
            sign = -1 if modes.get(key, _mode(key)) == 'max' else 1
            scored.append((sign * value, path))
    if scored:
        return min(scored)[1]
    if candidates:
        return max(candidates, key=os.path.getmtime)
    last = [p for p in paths if os.path.basename(p).endswith('last.ckpt')]
    if last:
        return last[0]
    hpc = [(int(m.group(1)), p) for p in paths
           for m in [re.fullmatch(r'hpc_ckpt_(\d+)\.ckpt', os.path.basename(p))] if m]
    return max(hpc)[1] if hpc else None


def _recorded_modes(paths):
    """``{metric: 'min' or 'max'}`` as the run's ModelCheckpoint recorded them in the newest
    of ``paths`` that holds a record (its state: the ``mode`` it resolved and its
    ``best_path``, whose name carries the metric), so that ``mode='max'`` on a metric without
    'acc' in its name (``val_f1``) ranks right. Empty when no checkpoint can tell."""
    for path in sorted(paths, key=os.path.getmtime, reverse=True):
        section = checkpoint_io.peek(path)
        states = section.get('callbacks') if section is not None else None
        modes = {}
        for state in (states.values() if isinstance(states, dict) else ()):
            if isinstance(state, dict) and state.get('mode') in ('min', 'max'):
                match = _CKPT_VALUE.search(os.path.basename(str(state.get('best_path'))))
                if match:
                    modes[match.group('key')] = state['mode']
        if modes:
            return modes
    return {}


def _log_dir_of(run, helper):
    """The version folder of ``run``: a path, or a row of ``runs()`` (its ``log_dir``)."""
    if isinstance(run, (str, os.PathLike)):
        return os.fspath(run)
    try:
        return os.fspath(run['log_dir'])
    except (TypeError, KeyError, IndexError):
        raise MisconfigurationException(
            f"{helper}: expected a version folder path or a row of notebook.runs() (with a "
            f"'log_dir'), got {type(run).__name__}: {run!r}. Pass e.g. "
            f"runs(save_path).iloc[0] or 'lightning_logs/version_0'.") from None


# ------------------------------------------------------------------------------ public
def metrics(log_dir):
    """``log_dir/metrics.csv`` as a pandas DataFrame, one row per logged row.

    Columns are typed: a column whose values are all ints is an integer column (pandas'
    nullable ``Int64`` when some rows leave it empty), numbers are ``float64`` (empty cells
    are NaN), anything else stays strings; ``created_at`` is parsed to datetimes. A
    half-written last line (a run still writing) is skipped. A folder without metrics.csv
    gives an empty DataFrame."""
    return _frame(log_dir)


def _frame(log_dir):
    """``metrics`` under another name: ``plot`` has an argument called ``metrics``."""
    import pandas as pd
    header, rows = _read_rows(log_dir)
    columns = {}
    for i, name in enumerate(header):
        values = [row[i] for row in rows]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, int) for v in present):
            dtype = 'int64' if len(present) == len(values) else 'Int64'
            columns[name] = pd.Series(values, dtype=dtype)
        elif present and all(isinstance(v, (int, float)) for v in present):
            columns[name] = pd.Series([math.nan if v is None else float(v) for v in values],
                                      dtype='float64')
        else:
            columns[name] = pd.Series(values, dtype=object)
    frame = pd.DataFrame(columns, columns=header)
    if 'created_at' in frame.columns:
        frame['created_at'] = pd.to_datetime(frame['created_at'], errors='coerce')
    return frame


def _summary(log_dir):
    """One row of ``runs()`` for ``log_dir`` (a dict)."""
    header, rows = _read_rows(log_dir)
    row = {'status': read_run_status(log_dir), 'epochs': None, 'steps': None}
    by_name = {name: [r[i] for r in rows if isinstance(r[i], (int, float))]
               for i, name in enumerate(header)}
    if by_name.get('epoch'):
        row['epochs'] = int(max(by_name['epoch'])) + 1
    if by_name.get('step'):
        row['steps'] = int(max(by_name['step']))
    for name in header:
        if name in INDEX_COLUMNS or not by_name[name]:
            continue
        values = [v for v in by_name[name] if not math.isnan(v)]
        row[f'{name}_last'] = by_name[name][-1]
        if values:
            row[f'{name}_best'] = max(values) if _mode(name) == 'max' else min(values)
        else:
            row[f'{name}_best'] = math.nan
    row['checkpoints'] = _checkpoints(log_dir)
    row['best_checkpoint'] = _best_checkpoint(log_dir)
    return row


def runs(save_path, name='lightning_logs'):
    """A pandas DataFrame with one row per ``<save_path>/<name>/version_<n>`` folder, sorted by
    version (a file with such a name is no run and is left out). Columns:

    - ``version`` (int) and ``log_dir`` (the version folder);
    - one column per hyperparameter (from ``hparams.json``, else ``meta_tags.csv``; a name that
      clashes with another column is prefixed ``hparam_``);
    - ``status``: 'running', 'finished', 'failed' or 'interrupted' from ``run_status.json``,
      ``None`` when the logger has not written one; 'died' when it says 'running' but the
      process that wrote it ran on this host and is gone (see ``read_run_status``);
    - ``epochs`` (highest ``epoch`` + 1) and ``steps`` (highest ``step``);
    - for each numeric metric ``m`` in metrics.csv: ``m_last`` (its last logged value) and
      ``m_best`` (min, or max for names containing 'acc'; NaN values ignored);
    - ``checkpoints`` (the list of ``checkpoints/*.ckpt`` paths) and ``best_checkpoint``
      (the one ``load_best`` loads, ``None`` without checkpoints).

    Reads only what is on disk, so it works while runs are writing (a half-written last line
    of metrics.csv is skipped). A missing experiment folder gives an empty DataFrame."""
    import pandas as pd
    root = os.path.join(os.fspath(save_path), name)
    versions = []
    if os.path.isdir(root):
        versions = sorted(int(d[len('version_'):]) for d in os.listdir(root)
                          if d.startswith('version_') and d[len('version_'):].isdigit()
                          and os.path.isdir(os.path.join(root, d)))
    records = []
    for version in versions:
        log_dir = os.path.join(root, f'version_{version}')
        summary = _summary(log_dir)
        record = {'version': version, 'log_dir': log_dir}
        for key, value in _hparams(log_dir).items():
            clash = key in summary or key in ('version', 'log_dir')
            record[f'hparam_{key}' if clash else key] = value
        record.update(summary)
        records.append(record)
    return pd.DataFrame.from_records(records)


def _run_dirs(log_dirs_or_runs):
    """A list of version folders from a path, a list of paths, a ``runs()`` DataFrame or one
    of its rows."""
    import pandas as pd
    if isinstance(log_dirs_or_runs, pd.DataFrame):
        if 'log_dir' not in log_dirs_or_runs.columns:
            raise MisconfigurationException(
                "plot(log_dirs_or_runs=DataFrame): the DataFrame has no 'log_dir' column; "
                "pass the DataFrame notebook.runs() returns (or a selection of its rows).")
        return [os.fspath(d) for d in log_dirs_or_runs['log_dir']]
    if isinstance(log_dirs_or_runs, (str, os.PathLike, pd.Series, dict)):
        return [_log_dir_of(log_dirs_or_runs, 'plot(log_dirs_or_runs=...)')]
    return [_log_dir_of(run, 'plot(log_dirs_or_runs=...)') for run in log_dirs_or_runs]


def _labels(log_dirs):
    """``version_<n>`` plus the hyperparameters whose values differ between ``log_dirs`` (a
    ``version`` hyperparameter, e.g. a sweep's, repeats the folder name and is left out)."""
    params = [_hparams(d) for d in log_dirs]
    keys = sorted({k for p in params for k in p} - {'version'})
    differing = [k for k in keys if len({repr(p.get(k)) for p in params}) > 1]
    labels = []
    for log_dir, p in zip(log_dirs, params):
        parts = [f'{k}={p.get(k)}' for k in differing]
        base = os.path.basename(os.path.normpath(log_dir))
        labels.append(f"{base}: {', '.join(parts)}" if parts else base)
    return labels


def plot(log_dirs_or_runs, metrics=('val_loss',), x='step', path=None):
    """Learning curves: one panel per metric in ``metrics`` (a name or a sequence of names),
    one line per run, against ``x`` (``'step'`` or ``'epoch'``; per epoch the last value
    logged in that epoch is drawn). Each line is labelled with its version folder and the
    hyperparameters whose values differ between the plotted runs.

    ``log_dirs_or_runs``: a version folder, a list of them, a ``runs()`` DataFrame (every row
    is plotted) or one row of it. Returns the ``matplotlib.figure.Figure``; with ``path``,
    also saves it there as a PNG. The figure is built without pyplot, so no backend is chosen
    or changed (headless machines need no display); in Jupyter the returned figure displays
    inline. Needs matplotlib: ``pip install -e ".[plot]"``."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise MisconfigurationException(
            'notebook.plot needs matplotlib, which is not installed. Install the optional '
            'extra: pip install -e ".[plot]" (or pip install matplotlib).') from err
    if x not in ('step', 'epoch'):
        raise MisconfigurationException(
            f"plot(x={x!r}): x must be 'step' or 'epoch'.")
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not names:
        raise MisconfigurationException(
            "plot(metrics=()): name at least one metric, e.g. metrics=('val_loss',).")
    log_dirs = _run_dirs(log_dirs_or_runs)
    if not log_dirs:
        raise MisconfigurationException(
            'plot(log_dirs_or_runs=...): no run to plot (an empty list or DataFrame). Pass '
            'version folders or the rows of notebook.runs().')
    frames = [_frame(d) for d in log_dirs]
    seen = sorted({c for f in frames for c in f.columns if c not in INDEX_COLUMNS})
    for name in names:
        if not any(name in f.columns and f[name].notna().any() for f in frames):
            raise MisconfigurationException(
                f"plot(metrics={names!r}): no plotted run logged {name!r}; its metrics.csv "
                f"columns are {seen}. Pass metrics= some of those.")
    labels = _labels(log_dirs)
    figure = Figure(figsize=(6.4, 3.6 * len(names)))
    axes = figure.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        for frame, label in zip(frames, labels):
            if name not in frame.columns or x not in frame.columns:
                continue
            points = frame[[x, name]].dropna()
            if x == 'epoch':
                points = points.groupby('epoch', as_index=False).last()
            if len(points):
                ax.plot(points[x].astype(float), points[name].astype(float),
                        marker='.' if len(points) < 30 else None, label=label)
        ax.set_xlabel(x)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize='small')
    figure.tight_layout()
    if path is not None:
        figure.savefig(os.fspath(path), format='png')
    return figure


def load_best(run_or_log_dir, model_cls):
    """The model of a run's best checkpoint, rebuilt with ``model_cls.load_from_checkpoint``
    (on the CPU).

    ``run_or_log_dir``: a version folder or a row of ``runs()``. The best checkpoint is
    ModelCheckpoint's best-by-metric file in ``checkpoints/`` (not ``last.ckpt``, not
    ``hpc_ckpt_*``); with several, the one whose value in the name
    (``...-val_loss=0.1234.ckpt``) is best in the mode the run's ModelCheckpoint recorded
    (without a record: max for metric names containing 'acc', else min); without any,
    ``last.ckpt``, else the newest ``hpc_ckpt_<n>.ckpt``. Raises ``MisconfigurationException`` when the run has no
    checkpoint."""
    log_dir = _log_dir_of(run_or_log_dir, 'load_best(run_or_log_dir=...)')
    best = _best_checkpoint(log_dir)
    if best is None:
        raise MisconfigurationException(
            f"load_best(run_or_log_dir={log_dir!r}): no *.ckpt file in "
            f"{os.path.join(log_dir, 'checkpoints')}. Pass a version folder of a run that "
            f"saved checkpoints (checkpoint_callback on).")
    return model_cls.load_from_checkpoint(best)

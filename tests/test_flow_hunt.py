"""The research workflow as researchers drive it: sweeps whose tunable arguments have a short
and a long flag, the table of trials whose metric went NaN, SLURM scripts for an experiment
folder whose path has spaces, and the notebook table of a folder holding stray files."""
import argparse
import io
import json
import os
import random
import shlex
import signal

import pytest
from test_tube import HyperOptArgumentParser

from models import TinyModel
from pytorch_lightning import Trainer, notebook, sweep
from pytorch_lightning.loggers import TestTubeLogger
from pytorch_lightning.utilities import slurm


def two_flag_parser():
    """A parser whose learning rate is tunable under two flags (``-lr`` and
    ``--learning_rate``), as many research scripts declare it."""
    parser = HyperOptArgumentParser(strategy='grid_search')
    parser.add_argument('--version', type=int, default=None)
    parser.opt_list('-lr', '--learning_rate', type=float, default=0.1, options=[0.1, 0.01],
                    tunable=True)
    parser.opt_list('--width', type=int, default=8, options=[8, 16], tunable=True)
    sweep.add_sweep_args(parser)
    parser.parse_args([])
    return parser


def test_a_tunable_argument_with_two_flags_is_swept_once():
    """test-tube lists an ``opt_list`` once per flag; each argument is one axis of the grid,
    so the grid has 2 x 2 points, each once, and a random search draws distinct points."""
    parser = two_flag_parser()
    assert sweep.tunable_names(parser) == ['learning_rate', 'width']
    grid = sweep.make_trials(parser, 'grid')
    assert grid == [{'learning_rate': 0.1, 'width': 8}, {'learning_rate': 0.1, 'width': 16},
                    {'learning_rate': 0.01, 'width': 8}, {'learning_rate': 0.01, 'width': 16}]
    assert sweep.make_trials(parser, 'grid', nb_trials=3) == grid[:3]
    drawn = sweep.make_trials(parser, 'random', nb_trials=4)
    assert sorted(map(repr, drawn)) == sorted(map(repr, grid))


def test_random_search_is_reproducible_with_a_seed_and_capped_at_the_grid():
    """Documented: random draws distinct points with Python's ``random`` (so ``random.seed``
    makes them reproducible), all of them when the grid has fewer than ``--nb_trials``."""
    parser = two_flag_parser()
    random.seed(7)
    first = sweep.make_trials(parser, 'random', nb_trials=3)
    random.seed(7)
    assert sweep.make_trials(parser, 'random', nb_trials=3) == first
    assert len({repr(t) for t in first}) == 3
    assert len(sweep.make_trials(parser, 'random', nb_trials=10)) == 4
    assert len(sweep.make_trials(parser, 'grid', nb_trials=10)) == 4


def test_a_tunable_argument_with_its_own_dest_is_swept():
    parser = HyperOptArgumentParser(strategy='grid_search')
    parser.opt_list('--learning_rate', dest='lr', type=float, default=0.1, options=[0.1, 0.01],
                    tunable=True)
    parser.parse_args([])
    assert sweep.tunable_names(parser) == ['lr']
    assert sweep.make_trials(parser, 'grid') == [{'lr': 0.1}, {'lr': 0.01}]


# ------------------------------------------------------------------------------ the table
def write_sweep(exp_dir, versions):
    spec = {'script': 'train.py', 'cwd': str(exp_dir), 'search': 'grid', 'cluster': 'local',
            'gpus': None, 'workers': 1, 'slurm': None,
            'trials': [{'version': v, 'hparams': {'lr': 10.0 ** -v}, 'args': []}
                       for v in versions]}
    sweep.write_trials(str(exp_dir), spec)


def write_trial(exp_dir, version, val_losses, code=0, status='finished'):
    folder = exp_dir / f'version_{version}'
    folder.mkdir(parents=True, exist_ok=True)
    rows = ''.join(f'{i},{i},{loss}\n' for i, loss in enumerate(val_losses))
    (folder / 'metrics.csv').write_text('epoch,step,val_loss\n' + rows)
    (folder / 'trial.log').write_text(f'[sweep] start version={version}\n'
                                      f'[sweep] exit code={code} wall_s=1.0\n')
    (folder / 'run_status.json').write_text(json.dumps({'status': status}))


def test_final_value_is_the_last_one_logged_even_when_it_is_nan(tmp_path):
    """A trial whose validation loss went NaN at its last epoch: its final value is NaN (as
    ``notebook.runs`` says), not the value before it diverged; its best ignores the NaN."""
    exp_dir = tmp_path / 'exp'
    write_sweep(exp_dir, [0, 1])
    write_trial(exp_dir, 0, [0.5, 0.3])
    write_trial(exp_dir, 1, [0.4, 0.2, 'nan'])
    table = sweep.trials_table(exp_dir).set_index('version')
    assert table.loc[1, 'val_loss_best'] == 0.2
    assert table.loc[1, 'val_loss_final'] != table.loc[1, 'val_loss_final']  # NaN
    assert table.loc[0, 'val_loss_final'] == 0.3
    runs = notebook.runs(tmp_path, 'exp').set_index('version')
    assert runs.loc[1, 'val_loss_last'] != runs.loc[1, 'val_loss_last']


# ------------------------------------------------------------------------------ notebook
def test_runs_skips_a_stray_file_named_like_a_version(tmp_path):
    exp_dir = tmp_path / 'exp'
    write_trial(exp_dir, 0, [0.5])
    (exp_dir / 'version_1').write_text('not a run')  # e.g. a note or a listing saved there
    runs = notebook.runs(tmp_path, 'exp')
    assert list(runs['version']) == [0]


# ------------------------------------------------------------------------------ SLURM
def sbatch_options(text):
    """The options sbatch reads from a script's ``#SBATCH`` lines: each line split into
    words the way sbatch splits it (whitespace separates, quotes group, ``#`` starts a
    comment)."""
    options = []
    for line in text.splitlines():
        if line.startswith('#SBATCH'):
            options += shlex.split(line[len('#SBATCH'):], comments=True)
    return options


def test_sbatch_lines_survive_an_experiment_path_with_spaces(tmp_path):
    exp_dir = tmp_path / 'my runs' / 'lr sweep'
    options = sweep.SlurmOptions(partition='gpu', time='1-00:00:00', gpus=4, nodes=2,
                                 ntasks_per_node=4, mem='64G')
    text = sweep.slurm_script(str(exp_dir), {'script': str(tmp_path / 'train.py'),
                                             'cwd': str(tmp_path)},
                              {'version': 3, 'args': ['--name=a b']}, options)
    assert sbatch_options(text) == [
        '--job-name=lr sweep-v3', f"--output={exp_dir / 'version_3' / 'trial.log'}",
        '--open-mode=append', '--nodes=2', '--ntasks-per-node=4', '--partition=gpu',
        '--time=1-00:00:00', '--mem=64G', '--gres=gpu:4', '--signal=USR1@90', '--requeue']


def test_requeue_does_not_wait_forever_for_scontrol(tmp_path, monkeypatch):
    """A preempted job whose ``scontrol`` hangs (slurmctld not answering) gets an error that
    says the HPC checkpoint is there, instead of waiting until SLURM kills it."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    scontrol = bin_dir / 'scontrol'
    scontrol.write_text('#!/bin/sh\nsleep 5\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv('PATH', f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm, 'SCONTROL_TIMEOUT_S', 0.5, raising=False)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(RuntimeError, match='scontrol requeue 42.*did not answer.*resubmit'):
            slurm.requeue('42')
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------ hparams
def test_hparams_of_a_test_tube_parser_come_back_with_their_types(tmp_path):
    """The namespace a HyperOptArgumentParser returns (flags, a 'False' string, None, text
    with commas, quotes and a line break, a drawn opt_range value), logged by a fit: the
    checkpoint, ``load_from_metrics`` and ``notebook.runs`` give back the same values with
    the same types (test-tube's methods on the namespace are left out)."""
    parser = HyperOptArgumentParser(strategy='grid_search')
    parser.add_argument('--version', type=int, default=None)
    parser.add_argument('--flag', action='store_true')
    parser.add_argument('--off', action='store_false')
    parser.add_argument('--note', default='a,b "c"\nd')
    parser.add_argument('--answer', default='False')
    parser.add_argument('--missing', default=None)
    parser.opt_list('--width', type=int, default=8, options=[8, 16], tunable=True)
    parser.opt_range('--decay', type=float, default=1e-4, low=1e-5, high=1e-3, nb_samples=2,
                     log_base=10, tunable=True)
    hparams = parser.parse_args(['--version', '0', '--flag', '--width', '16'])
    hparams.decay = sweep.make_trials(parser, 'grid')[-1]['decay']  # a drawn value
    expected = {k: v for k, v in vars(hparams).items() if not callable(v)}
    assert expected['width'] == 16 and expected['off'] is True and expected['missing'] is None

    logger = TestTubeLogger(tmp_path, 'exp', version=0)
    Trainer(logger=logger, default_save_path=str(tmp_path), progress_bar=False,
            print_weights_summary=False, max_nb_epochs=1).fit(TinyModel(hparams))
    folder = tmp_path / 'exp' / 'version_0'
    loaded = [TinyModel.load_from_checkpoint(folder / 'checkpoints' / 'last.ckpt').hparams,
              TinyModel.load_from_metrics(folder / 'checkpoints' / 'last.ckpt',
                                          folder / 'meta_tags.csv').hparams]
    for back in loaded:
        assert isinstance(back, argparse.Namespace)
        assert vars(back) == expected
        assert {k: type(v) for k, v in vars(back).items()} == \
            {k: type(v) for k, v in expected.items()}
    row = notebook.runs(tmp_path, 'exp').iloc[0]
    assert {k: row['hparam_version' if k == 'version' else k] for k in expected} == expected


# ------------------------------------------------------------------------------ GPUs
def int_gpus_parser():
    """A script whose ``--gpus`` is an int count (the Trainer takes ints too)."""
    parser = HyperOptArgumentParser(strategy='grid_search')
    parser.add_argument('--version', type=int, default=None)
    parser.add_argument('--gpus', type=int, default=None)
    parser.opt_list('--lr', type=float, default=0.1, options=[0.1, 0.01], tunable=True)
    return sweep.add_sweep_args(parser)


def test_a_gpu_sweep_works_with_an_int_gpus_argument(tmp_path, monkeypatch):
    """Local: each trial's ``--gpus`` is one GPU; SLURM: ``--slurm_gpus``. Both are written so
    that an ``int`` ``--gpus`` parses them back (the sweep used to refuse the argument)."""
    monkeypatch.setattr(sweep, 'gpu_ids', lambda gpus: ['0', '1'])
    monkeypatch.setattr(sweep, 'run_local', lambda *args, **kwargs: False)
    parser = int_gpus_parser()
    hparams = parser.parse_args(['--search', 'grid', '--gpus', '2'])
    sweep.run_sweep(parser, hparams, 'train.py', tmp_path / 'local', out=io.StringIO())
    spec = sweep.read_trials(tmp_path / 'local')
    assert [parser.parse_args(t['args']).gpus for t in spec['trials']] == [1, 1]

    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'sbatch').write_text('#!/bin/sh\necho 1001\n')
    (bin_dir / 'sbatch').chmod(0o755)
    monkeypatch.setenv('PATH', f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    parser = int_gpus_parser()
    hparams = parser.parse_args(['--search', 'grid', '--cluster', 'slurm', '--slurm_gpus', '2'])
    sweep.run_sweep(parser, hparams, 'train.py', tmp_path / 'slurm', out=io.StringIO())
    spec = sweep.read_trials(tmp_path / 'slurm')
    assert [parser.parse_args(t['args']).gpus for t in spec['trials']] == [2, 2]

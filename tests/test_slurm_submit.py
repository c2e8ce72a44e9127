"""A sweep on SLURM (``--cluster slurm``), with a fake ``sbatch`` and ``srun`` on PATH: the
generated scripts, their #SBATCH lines and commands, and one script run by hand."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from pytorch_lightning import sweep
from pytorch_lightning.exceptions import MisconfigurationException
from pytorch_lightning.hparams import read_tags_csv
from pytorch_lightning.loggers.test_tube import read_run_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, 'examples')
sys.path.insert(0, EXAMPLES)

import trainer_main  # noqa: E402

# records its arguments and a copy of the script, answers with a job id (sbatch --parsable)
FAKE_SBATCH = '''#!/bin/sh
n=$(ls "$FAKE_SLURM_RECORD" | grep -c '^args_')
n=$((n + 1))
echo "$@" > "$FAKE_SLURM_RECORD/args_$n"
for last; do :; done
cp "$last" "$FAKE_SLURM_RECORD/script_$n.sh"
echo "$((1000 + n))"
'''
FAILING_SBATCH = '''#!/bin/sh
echo "sbatch: error: invalid partition specified: nope" >&2
exit 1
'''
# records its arguments, drops its own options and runs the command (one task)
FAKE_SRUN = '''#!/bin/sh
echo "$@" > "$FAKE_SLURM_RECORD/srun_args"
while [ $# -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done
exec "$@"
'''


def install(folder, name, text):
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A bin folder first on PATH with a recording ``sbatch`` and ``srun``; returns the folder
    where they record."""
    bin_dir, record = tmp_path / 'bin', tmp_path / 'record'
    bin_dir.mkdir()
    record.mkdir()
    install(bin_dir, 'sbatch', FAKE_SBATCH)
    install(bin_dir, 'srun', FAKE_SRUN)
    monkeypatch.setenv('PATH', f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv('FAKE_SLURM_RECORD', str(record))
    return record


def parse_trial(args):
    """The namespace trainer_main's parser makes of a trial's arguments."""
    parent = trainer_main.build_parser()
    return trainer_main.DigitsSearchModel.add_model_specific_args(parent).parse_args(args)


def test_one_sbatch_script_per_trial(tmp_path, fake_slurm):
    result = trainer_main.main([
        '--model_name', 'digits', '--search', 'grid', '--nb_trials', '2', '--max_nb_epochs', '1',
        '--save_path', str(tmp_path), '--cluster', 'slurm', '--slurm_partition', 'gpu',
        '--slurm_time', '00:10:00', '--slurm_gpus', '2', '--slurm_mem', '4G',
        '--slurm_nodes', '1', '--slurm_ntasks_per_node', '2', '--slurm_conda_env', 'my env',
        '--slurm_modules', 'cuda/12.1, gcc', '--slurm_line=--qos=high',
        '--slurm_line', '#SBATCH --exclusive', '--slurm_grace', '120'])
    exp_dir = tmp_path / 'digits'
    assert result['sweep'].jobs == {0: '1001', 1: '1002'}
    assert result['exit_code'] == 0
    spec = json.loads((exp_dir / 'trials.json').read_text())
    assert [t['slurm_jobs'] for t in spec['trials']] == [['1001'], ['1002']]

    for n, trial in enumerate(spec['trials'], start=1):
        version = trial['version']
        path = exp_dir / 'slurm' / f'trial_{version}.sh'
        assert (fake_slurm / f'args_{n}').read_text().split() == ['--parsable', str(path)]
        text = (fake_slurm / f'script_{n}.sh').read_text()
        assert text == path.read_text()
        lines = text.splitlines()
        assert lines[0] == '#!/bin/bash'
        sbatch = [line for line in lines if line.startswith('#SBATCH')]
        assert set(sbatch) == {
            f'#SBATCH --job-name=digits-v{version}',
            f"#SBATCH --output={exp_dir / f'version_{version}' / 'trial.log'}",
            '#SBATCH --open-mode=append', '#SBATCH --nodes=1', '#SBATCH --ntasks-per-node=2',
            '#SBATCH --partition=gpu', '#SBATCH --time=00:10:00', '#SBATCH --mem=4G',
            '#SBATCH --gres=gpu:2', '#SBATCH --signal=USR1@120', '#SBATCH --requeue',
            '#SBATCH --qos=high', '#SBATCH --exclusive'}
        # sbatch reads #SBATCH lines only above the first command
        first_command = next(i for i, line in enumerate(lines[1:], 1)
                             if line.strip() and not line.startswith('#'))
        assert all(lines.index(line) < first_command for line in sbatch)
        assert 'module load cuda/12.1 gcc' in lines
        assert "conda activate 'my env'" in lines
        [srun] = [line for line in lines if line.startswith('srun ')]
        command = shlex.split(srun)
        assert command[:3] == ['srun', '-K', 'python']  # the activated environment's python
        assert command[3] == os.path.join(EXAMPLES, 'trainer_main.py')
        assert command[4:] == trial['args']
        # the trial's exact command line: its values, its version, its GPUs, no sweep flags
        parsed = parse_trial(trial['args'])
        assert {k: getattr(parsed, k) for k in trial['hparams']} == trial['hparams']
        assert parsed.version == version and parsed.gpus == '2'
        assert parsed.max_nb_epochs == 1 and parsed.save_path == str(tmp_path)
        assert parsed.search is None and parsed.cluster == 'local'
    assert spec['trials'][0]['hparams'] != spec['trials'][1]['hparams']


def test_without_sbatch_on_path_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    with pytest.raises(MisconfigurationException, match='sbatch'):
        trainer_main.main(['--search', 'grid', '--cluster', 'slurm', '--save_path',
                           str(tmp_path)])
    assert not (tmp_path / 'digits').exists()


def test_a_refused_submission_names_what_was_submitted(tmp_path, fake_slurm):
    install(tmp_path / 'bin', 'sbatch', FAILING_SBATCH)
    with pytest.raises(sweep.SubmissionError, match='invalid partition.*none.*--resume'):
        trainer_main.main(['--search', 'grid', '--nb_trials', '2', '--cluster', 'slurm',
                           '--slurm_partition', 'nope', '--save_path', str(tmp_path)])


def test_a_generated_script_run_by_hand_trains_its_trial(tmp_path, fake_slurm):
    """The script of trial 1, run as SLURM would run it (SLURM variables set, output appended
    to the trial's log), with a fake srun that runs its command: the trial trains into
    version_1 with its own hyperparameters, and --report shows it finished."""
    argv = ['--model_name', 'digits', '--search', 'grid', '--nb_trials', '2',
            '--max_nb_epochs', '1', '--train_percent_check', '0.1', '--val_percent_check', '0.2',
            '--save_path', str(tmp_path), '--cluster', 'slurm', '--slurm_grace', '60']
    trainer_main.main(argv)
    exp_dir = tmp_path / 'digits'
    spec = json.loads((exp_dir / 'trials.json').read_text())
    script = exp_dir / 'slurm' / 'trial_1.sh'
    assert f'srun -K {shlex.quote(sys.executable)} ' in script.read_text()

    env = dict(os.environ, SLURM_JOB_ID='4242', SLURM_NTASKS='1', SLURM_NNODES='1',
               SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_NODEID='0')
    log_path = exp_dir / 'version_1' / 'trial.log'
    with open(log_path, 'a') as log:  # what #SBATCH --output/--open-mode=append do
        proc = subprocess.run(['bash', str(script)], env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    assert (fake_slurm / 'srun_args').read_text().split()[0] == '-K'

    log = sweep.read_trial_log(log_path)
    assert (log.runs, log.exit_code) == (1, 0)
    version = exp_dir / 'version_1'
    assert read_run_status(version) == 'finished'
    tags = read_tags_csv(version / 'meta_tags.csv')
    assert {k: tags[k] for k in spec['trials'][1]['hparams']} == spec['trials'][1]['hparams']
    assert tags['version'] == 1
    assert os.listdir(version / 'checkpoints')

    report = trainer_main.main([*argv, '--report'])['sweep']
    rows = report.table.set_index('version')
    assert rows.loc[1, 'status'] == 'finished' and rows.loc[1, 'epochs'] == 1
    assert rows.loc[1, 'val_loss_best'] > 0
    assert rows.loc[0, 'status'] == 'pending'
    assert (exp_dir / 'trials.csv').exists()

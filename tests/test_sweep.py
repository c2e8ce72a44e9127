"""pytorch_lightning.sweep: trial generation and command lines, the local runner (GPU pinning,
Ctrl-C, the stop timeout), the table, and real sweeps of the digits example."""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pytorch_lightning import sweep
from pytorch_lightning.exceptions import MisconfigurationException
from pytorch_lightning.hparams import read_tags_csv
from pytorch_lightning.loggers.test_tube import read_run_status
from pytorch_lightning.utilities import pid_alive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, 'examples')
sys.path.insert(0, EXAMPLES)

import trainer_main  # noqa: E402

# A training script with two test models, run by the sweeps below (and by each of their
# trials): the digits example with a small grid. 'grid_digits' has a learning rate of 1e30 at
# grid point 2, whose loss is NaN at the second batch (NonFiniteLossError). 'held_digits'
# holds version 1 at the start of its second epoch until the file $SWEEP_TEST_RELEASE exists
# (it creates $SWEEP_TEST_RELEASE.holding when it starts waiting).
SCRIPT = '''
import os, sys, time
sys.path.insert(0, {examples!r})
import trainer_main  # puts the checkout's package first on sys.path
from digits_search import DigitsSearchModel
from test_tube import HyperOptArgumentParser


def grid_parser(parent_parser, rates):
    parser = HyperOptArgumentParser(strategy=parent_parser.strategy, parents=[parent_parser],
                                    conflict_handler='resolve')
    parser.opt_list('--hidden_dim', default=16, type=int, options=[16, 32], tunable=True)
    parser.opt_list('--learning_rate', default=0.01, type=float, options=rates, tunable=True)
    parser.add_argument('--drop_prob', default=0.0, type=float)
    parser.add_argument('--batch_size', default=32, type=int)
    return parser


class GridDigits(DigitsSearchModel):
    @staticmethod
    def add_model_specific_args(parent_parser):
        return grid_parser(parent_parser, [0.01, 0.003, 1e30])


class HeldDigits(DigitsSearchModel):
    @staticmethod
    def add_model_specific_args(parent_parser):
        return grid_parser(parent_parser, [0.01, 0.003])

    def on_epoch_start(self):
        release = os.environ.get('SWEEP_TEST_RELEASE')
        if release and self.hparams.version == 1 and self.trainer.current_epoch == 1:
            open(release + '.holding', 'w').close()
            deadline = time.time() + 60
            while not os.path.exists(release) and time.time() < deadline:
                time.sleep(0.05)


if __name__ == '__main__':
    models = {{'grid_digits': GridDigits, 'held_digits': HeldDigits}}
    sys.exit(trainer_main.main(models=models, script=__file__)['exit_code'])
'''
TINY = ['--train_percent_check', '0.1', '--val_percent_check', '0.2']


@pytest.fixture
def script(tmp_path):
    path = tmp_path / 'sweep_script.py'
    path.write_text(SCRIPT.format(examples=EXAMPLES))
    return str(path)


def run_script(script, args, cwd, env=None, timeout=240):
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def read_table(exp_dir):
    with open(os.path.join(exp_dir, 'trials.csv'), newline='') as f:
        return list(csv.DictReader(f))


def metric_values(log_dir, name):
    with open(os.path.join(log_dir, 'metrics.csv'), newline='') as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


# ------------------------------------------------------------------------------ unit tests
def hopt_parser():
    from test_tube import HyperOptArgumentParser
    parser = HyperOptArgumentParser(strategy='grid_search')
    parser.add_argument('--version', type=int, default=None)
    parser.opt_list('--width', type=int, default=8, options=[8, 16, 32], tunable=True)
    parser.opt_list('--lr', type=float, default=0.1, options=[0.1, 0.01], tunable=True)
    parser.opt_list('--depth', type=int, default=2, options=[2, 3], tunable=False)
    return sweep.add_sweep_args(parser)


def test_make_trials_grid_and_random():
    parser = hopt_parser()
    parser.parse_args([])
    grid = sweep.make_trials(parser, 'grid')
    # the grid in test-tube's order (the last tunable argument varies fastest); 'depth' is
    # not tunable
    assert grid == [{'width': w, 'lr': lr} for w in (8, 16, 32) for lr in (0.1, 0.01)]
    assert sweep.make_trials(parser, 'grid', nb_trials=4) == grid[:4]
    drawn = sweep.make_trials(parser, 'random', nb_trials=4)
    assert len(drawn) == 4 and all(t in grid for t in drawn)
    assert len({tuple(sorted(t.items())) for t in drawn}) == 4  # distinct points
    with pytest.raises(MisconfigurationException, match='--nb_trials'):
        sweep.make_trials(parser, 'random')


def test_make_trials_without_tunable_arguments_says_how_to_add_them():
    from test_tube import HyperOptArgumentParser
    parser = HyperOptArgumentParser(strategy='grid_search')
    parser.add_argument('--lr', type=float, default=0.1)
    parser.parse_args([])
    with pytest.raises(MisconfigurationException, match='opt_list'):
        sweep.make_trials(parser, 'grid')


def test_trial_command_parses_back_to_the_trial_values():
    parser = argparse.ArgumentParser()
    parser.add_argument('--version', type=int, default=None)
    parser.add_argument('--name', default=None)
    parser.add_argument('--offset', type=float, default=0.0)
    parser.add_argument('--fast', action='store_true')
    parser.add_argument('--no_shuffle', dest='shuffle', action='store_false')
    parser.add_argument('--sizes', type=int, nargs='+', default=[1])
    parser.add_argument('--tag', action='append', default=None)
    parser.add_argument('--width', type=int, default=8)
    parser.add_argument('--lr', '-l', type=float, default=0.1)
    sweep.add_sweep_args(parser)
    values = {'version': 3, 'name': None, 'offset': -0.5, 'fast': True, 'shuffle': False,
              'sizes': [4, 5], 'tag': ['a b', '-x'], 'width': 16, 'lr': 0.01,
              'search': 'grid', 'workers': 2}
    args = sweep.trial_command(parser, values)
    assert '--offset=-0.5' in args and '--fast' in args and '--no_shuffle' in args
    assert '--lr=0.01' in args  # the long form
    assert not any(a.startswith(('--name', '--search', '--workers')) for a in args)
    parsed = vars(parser.parse_args(args))
    for key, value in values.items():
        if key not in sweep.SWEEP_DESTS:
            assert parsed[key] == value, key
    assert parsed['search'] is None  # the sweep's own flags never reach a trial


def test_trial_command_refuses_a_value_that_does_not_survive_the_command_line():
    parser = argparse.ArgumentParser()
    parser.add_argument('--flag', type=bool, default=True)  # bool('False') is True
    with pytest.raises(MisconfigurationException, match="'flag'"):
        sweep.trial_command(parser, {'flag': False})


def test_gpu_ids_count_within_cuda_visible_devices():
    assert sweep.gpu_ids(None, device_count=4) is None
    assert sweep.gpu_ids('0,1', device_count=4, visible='') == ['0', '1']
    assert sweep.gpu_ids('0,1', device_count=4, visible='2,3,6,7') == ['2', '3']
    assert sweep.gpu_ids('-1', device_count=2, visible='5,7') == ['5', '7']
    assert sweep.gpu_ids('2', device_count=4, visible='') == ['0', '1']  # a count
    with pytest.raises(MisconfigurationException, match='CUDA is not available'):
        sweep.gpu_ids('0,1', device_count=0)


def test_trial_env_sets_torch_threads_and_the_visible_gpu():
    env = sweep.trial_env(threads=1, gpu='5')
    assert env['CUDA_VISIBLE_DEVICES'] == '5' and env['MKL_NUM_THREADS'] == '1'
    out = subprocess.run([sys.executable, '-c', 'import torch; print(torch.get_num_threads())'],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == '1', out.stderr


class FakeProcess:
    """Ends (exit code 0) at its ``lifetime``-th poll; records what it was started with."""
    started = []
    running = set()

    def __init__(self, command, env, lifetime, **kwargs):
        self.command, self.env, self.kwargs = command, env, kwargs
        self.polls, self.lifetime, self.pid = 0, lifetime, None
        self.gpu = env.get('CUDA_VISIBLE_DEVICES')
        # at its start, no running trial holds this GPU
        self.gpus_in_use = {p.gpu for p in FakeProcess.running}
        FakeProcess.started.append(self)
        FakeProcess.running.add(self)

    def poll(self):
        self.polls += 1
        if self.polls < self.lifetime:
            return None
        FakeProcess.running.discard(self)
        return 0


def test_run_local_gives_each_running_trial_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, 'POLL_S', 0.001)
    monkeypatch.setattr(FakeProcess, 'started', [])
    monkeypatch.setattr(FakeProcess, 'running', set())
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    lifetimes = iter([5, 2, 7, 1, 3, 4, 2])
    trials = [{'version': v, 'hparams': {'x': v}, 'args': [f'--version={v}']} for v in range(7)]
    spec = {'script': 'train.py', 'cwd': str(tmp_path), 'trials': trials}
    popen = lambda command, env, **kw: FakeProcess(command, env, next(lifetimes), **kw)  # noqa
    stopped = sweep.run_local(str(tmp_path), spec, trials, workers=3, gpus=['3', '5'],
                              threads=2, popen=popen)

    assert not stopped
    started = FakeProcess.started
    assert [p.command[-1] for p in started] == [f'--version={v}' for v in range(7)]
    for proc in started:
        assert proc.gpu in ('3', '5')
        assert proc.gpu not in proc.gpus_in_use  # never shared with a running trial
        assert len(proc.gpus_in_use) <= 1        # 2 GPUs: at most 2 at once, not 3 workers
        assert proc.env['OMP_NUM_THREADS'] == '2'
        assert proc.kwargs['start_new_session'] is True
    assert {p.gpu for p in started} == {'3', '5'}
    for v in range(7):  # each trial's log has its start and exit line
        log = sweep.read_trial_log(sweep.trial_log(tmp_path, v))
        assert (log.runs, log.exit_code) == (1, 0)


def test_gpu_pool_lends_each_gpu_once():
    pool = sweep.GpuPool(['0', '1'])
    assert pool.take('a') == '0' and pool.take('b') == '1'
    assert pool.take('c') is None
    pool.give_back('a')
    assert pool.take('c') == '0'
    pool.give_back('nobody')  # nothing to give back
    assert pool.free == []


def test_ctrl_c_stops_the_trials_and_kills_those_that_ignore_it(tmp_path, monkeypatch):
    """A trial that ignores SIGINT is killed after stop_timeout_s; the trials that had not
    started never start; no process is left behind."""
    child = tmp_path / 'stubborn.py'
    child.write_text('import os, signal, sys, time\n'
                     'signal.signal(signal.SIGINT, signal.SIG_IGN)\n'
                     'print("pid", os.getpid(), flush=True)\n'
                     'time.sleep(120)\n')
    trials = [{'version': v, 'hparams': {}, 'args': []} for v in range(3)]
    spec = {'script': str(child), 'cwd': str(tmp_path), 'trials': trials}
    handler = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        stopped = sweep.run_local(str(tmp_path), spec, trials, workers=1, stop_timeout_s=1.0)
    finally:
        timer.cancel()
    assert stopped
    log = sweep.read_trial_log(sweep.trial_log(tmp_path, 0))
    assert log.exit_code == -signal.SIGKILL and log.stopped
    assert sweep.trial_status(None, log) == 'interrupted'
    pid = int(next(line for line in log.last_lines if line.startswith('pid')).split()[1])
    assert not pid_alive(pid)
    assert not os.path.exists(sweep.trial_log(tmp_path, 1))  # never started
    assert signal.getsignal(signal.SIGINT) is handler  # the sweep's handler is gone


def test_trial_time_limit_stops_a_trial_and_kills_one_that_ignores_sigterm(tmp_path):
    """--trial_time: a trial still running at its limit gets SIGTERM and is 'timeout'; one
    that ignores SIGTERM is killed stop_timeout_s later; a trial within its limit is not
    touched, and the sweep itself is not 'stopped'."""
    child = tmp_path / 'trial.py'
    child.write_text('import os, signal, sys, time\n'
                     'print("pid", os.getpid(), flush=True)\n'
                     'if sys.argv[1] == "stubborn":\n'
                     '    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
                     'time.sleep(0.1 if sys.argv[1] == "quick" else 120)\n')
    trials = [{'version': v, 'hparams': {}, 'args': [kind]}
              for v, kind in enumerate(['quick', 'slow', 'stubborn'])]
    spec = {'script': str(child), 'cwd': str(tmp_path), 'trials': trials}
    start = time.monotonic()
    stopped = sweep.run_local(str(tmp_path), spec, trials, workers=3, stop_timeout_s=1.0,
                              time_limit_s=2.0)
    assert not stopped and time.monotonic() - start < 30
    logs = [sweep.read_trial_log(sweep.trial_log(tmp_path, v)) for v in range(3)]
    assert logs[0].exit_code == 0 and not logs[0].timed_out
    assert sweep.trial_status(None, logs[0]) == 'finished'
    assert logs[1].exit_code == -signal.SIGTERM and logs[1].timed_out and not logs[1].stopped
    assert logs[2].exit_code == -signal.SIGKILL and logs[2].timed_out
    assert [sweep.trial_status(None, log) for log in logs[1:]] == ['timeout', 'timeout']
    # a run that finished before the signal took effect stays finished
    assert sweep.trial_status('finished', logs[1]) == 'finished'
    for log in logs:
        pid = int(next(line for line in log.last_lines if line.startswith('pid')).split()[1])
        assert not pid_alive(pid)


def test_trial_time_is_parsed_and_refused_on_slurm(tmp_path):
    assert sweep.parse_duration('600') == 600 and sweep.parse_duration('1:30:00') == 5400
    assert sweep.parse_duration('10:00') == 600 and sweep.parse_duration(None) is None
    for bad in ('', 'soon', '0', '-5', '1:2:3:4', '1h', 'inf', '1.5:00'):
        with pytest.raises(MisconfigurationException, match='--trial_time'):
            sweep.parse_duration(bad)
    with pytest.raises(MisconfigurationException, match='--slurm_time'):
        trainer_main.main(['--search', 'grid', '--cluster', 'slurm', '--trial_time', '60',
                           '--save_path', str(tmp_path)])
    assert not (tmp_path / 'digits').exists()  # refused before anything was written


def test_trial_log_status_and_error():
    lines = ['[sweep] start version=0 at x: python t.py', 'Traceback (most recent call last):',
             '  File "t.py", line 1', 'ValueError: first try', '[sweep] exit code=1 wall_s=2.5',
             '[sweep] start version=0 at y: python t.py', 'Epoch 0: 10%',
             'Traceback (most recent call last):', '  File "t.py", line 1',
             '    raise NonFiniteLossError(', 'pytorch_lightning.exceptions.NonFiniteLossError: '
             'training_step returned a NaN loss', '[sweep] exit code=1 wall_s=1.5']
    log = sweep.TrialLog(runs=2, exit_code=1, wall_s=4.0, last_lines=lines[6:-1])
    assert sweep.error_of(log.last_lines).startswith('pytorch_lightning.exceptions.'
                                                     'NonFiniteLossError: training_step')
    assert sweep.error_of(['some output', 'Killed']) == 'Killed'
    assert sweep.trial_status('failed', log) == 'failed'
    assert sweep.trial_status('interrupted', log) == 'interrupted'
    assert sweep.trial_status('finished', sweep.TrialLog(runs=1, exit_code=0)) == 'finished'
    assert sweep.trial_status(None, sweep.TrialLog(runs=1, exit_code=0)) == 'finished'
    assert sweep.trial_status('interrupted', sweep.TrialLog(runs=1, exit_code=0)) == \
        'interrupted'  # SLURM preemption: requeued, exit code 0
    assert sweep.trial_status(None, sweep.TrialLog(runs=1, exit_code=-2)) == 'interrupted'
    # stopped by the sweep after its fit finished (the run is complete)
    assert sweep.trial_status('finished', sweep.TrialLog(runs=1, exit_code=-2,
                                                         stopped=True)) == 'finished'
    # the script failed after a finished fit
    assert sweep.trial_status('finished', sweep.TrialLog(runs=1, exit_code=1)) == 'failed'
    assert sweep.trial_status('running', sweep.TrialLog(runs=1)) == 'running'
    assert sweep.trial_status(None, sweep.TrialLog()) == 'pending'


def test_a_new_sweep_refuses_an_experiment_folder_in_use(tmp_path):
    (tmp_path / 'digits' / 'version_0').mkdir(parents=True)
    with pytest.raises(MisconfigurationException, match='--resume'):
        trainer_main.main(['--search', 'grid', '--save_path', str(tmp_path)])
    with pytest.raises(MisconfigurationException, match='no sweep'):
        trainer_main.main(['--resume', '--save_path', str(tmp_path), '--exp_name', 'other'])
    with pytest.raises(MisconfigurationException, match='--workers 0'):
        trainer_main.main(['--search', 'grid', '--workers', '0', '--save_path', str(tmp_path),
                           '--exp_name', 'new'])
    assert not (tmp_path / 'new').exists()  # refused before anything was written


def test_a_gpu_sweep_gives_each_trial_one_gpu_on_its_command_line(tmp_path, monkeypatch):
    """--gpus lists the GPUs the trials share: each trial's command says --gpus=1 (its own
    GPU, made visible alone by the runner), and one worker per GPU by default."""
    asked, ran = [], {}
    monkeypatch.setattr(sweep, 'gpu_ids', lambda gpus: asked.append(gpus) or ['4', '6'])
    monkeypatch.setattr(sweep, 'run_local', lambda exp_dir, spec, trials, **kw: ran.update(
        trials=trials, **kw) or False)
    result = trainer_main.main(['--search', 'grid', '--nb_trials', '3', '--gpus', '0,1',
                                '--save_path', str(tmp_path)])
    assert asked == ['0,1']
    assert ran['gpus'] == ['4', '6'] and ran['workers'] == 2
    assert [t['version'] for t in ran['trials']] == [0, 1, 2]
    for trial in ran['trials']:
        assert '--gpus=1' in trial['args'] and f"--version={trial['version']}" in trial['args']
    assert list(result['sweep'].table['status']) == ['pending'] * 3


# ------------------------------------------------------------------------------ real sweeps
def test_grid_of_four_trials_on_two_workers(tmp_path, script):
    """4 grid points of digits, 2 at a time: the table is right and sorted, each version's
    tags are its trial's, and the NaN trial is failed with its error while the others finish."""
    proc = run_script(script, ['--model_name', 'grid_digits', '--search', 'grid', '--nb_trials',
                               '4', '--workers', '2', '--max_nb_epochs', '1', *TINY,
                               '--save_path', str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # a trial failed
    exp_dir = tmp_path / 'grid_digits'
    spec = json.loads((exp_dir / 'trials.json').read_text())
    expected = [{'hidden_dim': 16, 'learning_rate': 0.01}, {'hidden_dim': 16,
                'learning_rate': 0.003}, {'hidden_dim': 16, 'learning_rate': 1e30},
                {'hidden_dim': 32, 'learning_rate': 0.01}]
    assert [t['hparams'] for t in spec['trials']] == expected

    rows = read_table(exp_dir)
    assert [r['status'] for r in rows] == ['finished'] * 3 + ['failed']
    failed = rows[-1]
    assert failed['version'] == '2' and float(failed['learning_rate']) == 1e30
    assert 'NonFiniteLossError' in failed['error'] and 'NaN' in failed['error']
    assert read_run_status(exp_dir / 'version_2') == 'failed'
    finished = rows[:3]
    bests = [float(r['val_loss_best']) for r in finished]
    assert bests == sorted(bests)  # best (lowest) val_loss first
    for row in finished:
        log_dir = exp_dir / f"version_{row['version']}"
        values = metric_values(log_dir, 'val_loss')
        assert float(row['val_loss_best']) == pytest.approx(min(values))
        assert float(row['val_loss_final']) == pytest.approx(values[-1])
        assert row['epochs'] == '1' and float(row['wall_s']) > 0 and row['error'] == ''
        assert os.path.dirname(os.path.dirname(row['best_checkpoint'])) == str(log_dir)
        assert os.path.isfile(row['best_checkpoint'])
    for trial in spec['trials']:  # each version is tagged with its own trial's values
        tags = read_tags_csv(exp_dir / f"version_{trial['version']}" / 'meta_tags.csv')
        assert tags['version'] == trial['version']
        assert {k: tags[k] for k in trial['hparams']} == trial['hparams']
        assert not set(sweep.SWEEP_DESTS) & set(tags)  # the sweep's flags are not logged
    assert 'val_loss_best' in proc.stdout and 'NonFiniteLossError' in proc.stdout


def wait_for(condition, timeout_s=120, what=''):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


def test_resume_after_ctrl_c(tmp_path, script):
    """SIGINT once trial 0 finished while trial 1 is in its second epoch (3 trials, 2
    workers): the sweep stops the running trials and writes the table; --resume skips trial
    0, continues trial 1 from its checkpoint, runs trial 2, and every trial ends finished."""
    release = tmp_path / 'release'
    env = dict(os.environ, SWEEP_TEST_RELEASE=str(release))
    args = ['--model_name', 'held_digits', '--search', 'grid', '--nb_trials', '3',
            '--workers', '2', '--max_nb_epochs', '2', *TINY, '--save_path', str(tmp_path)]
    exp_dir = tmp_path / 'held_digits'
    sweeper = subprocess.Popen([sys.executable, script, *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sweep.read_trial_log(exp_dir / 'version_0' / 'trial.log').exit_code
                 == 0 and os.path.exists(str(release) + '.holding'), what='trial 0 and the hold')
        sweeper.send_signal(signal.SIGINT)
        output, _ = sweeper.communicate(timeout=120)
    finally:
        if sweeper.poll() is None:
            sweeper.kill()
            sweeper.wait(timeout=10)
    assert sweeper.returncode == 130, output[-3000:]
    rows = {r['version']: r for r in read_table(exp_dir)}
    assert rows['0']['status'] == 'finished'
    assert rows['1']['status'] == 'interrupted'
    assert rows['2']['status'] in ('interrupted', 'pending')  # started as trial 0 ended, or not
    held_pid = json.loads((exp_dir / 'version_1' / 'run_status.json').read_text())['pid']
    assert read_run_status(exp_dir / 'version_1') == 'interrupted'
    assert not pid_alive(held_pid)
    assert os.listdir(exp_dir / 'version_1' / 'checkpoints')  # epoch 0's checkpoint
    assert '--resume' in output

    first = exp_dir / 'version_0'
    before = {name: ((first / name).read_bytes(), os.stat(first / name).st_mtime_ns)
              for name in ('metrics.csv', 'trial.log')}
    release.touch()
    proc = run_script(script, [*args, '--resume'], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = read_table(exp_dir)
    assert sorted(r['version'] for r in rows) == ['0', '1', '2']
    assert all(r['status'] == 'finished' for r in rows), rows
    for name, (content, mtime) in before.items():  # trial 0 did not run again
        assert (first / name).read_bytes() == content
        assert os.stat(first / name).st_mtime_ns == mtime
    log = sweep.read_trial_log(exp_dir / 'version_1' / 'trial.log', keep=10000)
    assert log.runs == 2 and log.exit_code == 0
    assert any('restoring its newest checkpoint' in line for line in log.last_lines)
    assert len(metric_values(exp_dir / 'version_1', 'val_loss')) == 2  # one per epoch
    assert 'skipped' in proc.stdout


def test_a_killed_sweep_ends_its_running_trials(tmp_path, script):
    """SIGKILL to the sweep (no chance to stop its trials) while trial 1 is held in its
    second epoch: the trial notices its sweep is gone, ends itself as on SIGTERM (its logs
    saved, status 'interrupted') long before its hold would end, leaving no process behind."""
    release = tmp_path / 'release'  # never created: the trial would hold for 60 s
    env = dict(os.environ, SWEEP_TEST_RELEASE=str(release))
    args = ['--model_name', 'held_digits', '--search', 'grid', '--nb_trials', '2',
            '--workers', '2', '--max_nb_epochs', '2', *TINY, '--save_path', str(tmp_path)]
    exp_dir = tmp_path / 'held_digits'
    sweeper = subprocess.Popen([sys.executable, script, *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held_pid = None
    try:
        wait_for(lambda: os.path.exists(str(release) + '.holding'), what='the hold')
        held_pid = json.loads((exp_dir / 'version_1' / 'run_status.json').read_text())['pid']
        sweeper.kill()
        sweeper.wait(timeout=10)
        # unwatched, the trial would hold for 60 s and then train on
        wait_for(lambda: not pid_alive(held_pid), timeout_s=30, what='the orphaned trial to end')
    finally:
        if sweeper.poll() is None:
            sweeper.kill()
            sweeper.wait(timeout=10)
        if held_pid is not None and pid_alive(held_pid):
            os.killpg(held_pid, signal.SIGKILL)  # its own session: the trial and its workers
    assert read_run_status(exp_dir / 'version_1') == 'interrupted'
    wait_for(lambda: read_run_status(exp_dir / 'version_0') in ('finished', 'interrupted'),
             timeout_s=60, what='trial 0 to end')


def test_a_trial_whose_process_was_sigkilled_is_died_and_runs_again(tmp_path):
    """A trial's process and the sweep that ran it were killed (no exit line in trial.log):
    its logger's 'running' names a process that is gone, so the table says 'died', the
    sweep's exit code counts it as a failure, and ``--resume`` runs it again (also on SLURM,
    where a 'running' trial is left to its job)."""
    exp_dir = tmp_path / 'exp'
    script = ("import sys, time\n"
              "from pytorch_lightning.loggers import TestTubeLogger\n"
              "logger = TestTubeLogger(save_dir=sys.argv[1], name='exp', version=0)\n"
              "logger.log_hyperparams({'lr': 0.1})\n"
              "print('ready', flush=True)\n"
              "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, '-c', script, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'ready'
        assert read_run_status(exp_dir / 'version_0') == 'running'
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    with open(sweep.trial_log(exp_dir, 0), 'w') as f:
        f.write('[sweep] start version=0 at now: python t.py --lr 0.1\n')
    trial = {'version': 0, 'hparams': {'lr': 0.1}, 'args': ['--lr', '0.1']}
    sweep.write_trials(str(exp_dir), {'trials': [trial]})
    table = sweep.trials_table(exp_dir)
    assert list(table['status']) == ['died'] and table['error'][0] == ''
    assert sweep.SweepResult(str(exp_dir), table).exit_code == 1
    assert sweep._needs_run(str(exp_dir), trial, 'slurm')

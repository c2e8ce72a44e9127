"""Exact resume after a real SIGKILL, a kill during a save, and a SLURM SIGUSR1 round trip.

Each case runs tests/resume_script.py in a subprocess (dropout, shuffling, numpy and python
RNG, accumulation windows, an LR scheduler, early stopping, mid-epoch validation) and compares
the final parameters and metric rows with an uninterrupted run: they must be identical.
"""
import csv
import os
import signal
import subprocess
import sys

import pytest
import torch

from pytorch_lightning import checkpoint_io

SCRIPT = os.path.join(os.path.dirname(__file__), 'resume_script.py')


def run(save_dir, out, *args, env=None, expect=0):
    proc = subprocess.run([sys.executable, SCRIPT, str(save_dir), str(out), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return proc


def rows(folder):
    with open(os.path.join(folder, 'metrics.csv')) as f:
        return [{k: v for k, v in r.items() if k != 'created_at'} for r in csv.DictReader(f)]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp('full')
    run(folder, folder / 'out.pt')
    return torch.load(folder / 'out.pt'), rows(folder / 'lightning_logs' / 'version_0')


def assert_same_run(result, reference, log_folder):
    expected, expected_rows = reference
    assert result['global_step'] == expected['global_step']
    assert result['epoch'] == expected['epoch'] and result['es_wait'] == expected['es_wait']
    for name, value in expected['params'].items():
        assert torch.equal(result['params'][name], value), name
    assert rows(log_folder) == expected_rows  # same rows: none duplicated, none missing


# 11 batches per epoch, windows of 3, validation after batches 5 and 10 of each epoch.
@pytest.mark.parametrize('kill_at', [
    5,    # right after a validation point, mid-accumulation window (2 of 3 batches summed)
    13,   # early in epoch 1, after an epoch-end checkpoint
    19,   # mid-epoch 1, between optimizer-step checkpoints
    30,   # late, after early-stopping counters and LR schedule have moved
])
def test_sigkill_then_resume_is_bit_exact(tmp_path, uninterrupted, kill_at):
    out = tmp_path / 'out.pt'
    run(tmp_path, out, '--kill-at', kill_at, expect=-signal.SIGKILL)
    assert not out.exists()
    last = tmp_path / 'ckpt' / 'last.ckpt'
    saved_at = checkpoint_io.load(last)['lightning']['trainer_state']['total_batches']
    assert 0 < saved_at <= kill_at
    run(tmp_path, out, '--resume', last)
    assert_same_run(torch.load(out), uninterrupted, tmp_path / 'lightning_logs' / 'version_0')


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, uninterrupted):
    out = tmp_path / 'out.pt'
    run(tmp_path, out, '--kill-at', 9, '--kill-in', 'save', expect=-signal.SIGKILL)
    folder = tmp_path / 'ckpt'
    leftovers = [n for n in os.listdir(folder) if n.endswith('.tmp')]
    assert leftovers  # the process died after writing the temporary file, before the rename
    previous = checkpoint_io.load(folder / 'last.ckpt')  # still complete and loadable
    assert previous['lightning']['trainer_state']['total_batches'] < 9
    run(tmp_path, out, '--resume', folder / 'last.ckpt')
    assert_same_run(torch.load(out), uninterrupted, tmp_path / 'lightning_logs' / 'version_0')
    assert not [n for n in os.listdir(folder) if n.endswith('.tmp')]  # cleaned on next save


def test_slurm_sigusr1_saves_requeues_and_resumes(tmp_path, uninterrupted, fake_scontrol):
    path, calls = fake_scontrol
    env = dict(os.environ, SLURM_JOB_ID='4242', PATH=path)
    out, save_dir = tmp_path / 'out.pt', tmp_path / 'run'
    proc = run(save_dir, out, '--kill-at', 16, '--kill-in', 'usr1', env=env, expect=0)
    assert 'requeued job 4242' in proc.stdout
    assert calls.read_text().split() == ['requeue', '4242']
    assert not out.exists()  # fit did not return: the process exited for the requeue
    hpc = save_dir / 'lightning_logs' / 'version_4242' / 'checkpoints' / 'hpc_ckpt_1.ckpt'
    assert checkpoint_io.load(hpc)['lightning']['trainer_state']['total_batches'] == 17
    proc = run(save_dir, out, env=env)  # the requeued job: same command, restores by itself
    assert 'resumed from' in proc.stdout and 'hpc_ckpt_1.ckpt' in proc.stdout
    assert_same_run(torch.load(out), uninterrupted,
                    save_dir / 'lightning_logs' / 'version_4242')

"""Distributed training on CPU processes (gloo): fit starting the processes itself, torchrun,
a simulated SLURM job, failures, agreement on stopping, exact evaluation and exact resume.

Every test here starts real processes (a few seconds each)."""
import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from pytorch_lightning import MisconfigurationException, NonFiniteLossError, Trainer
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.exceptions import RankFailedError
from pytorch_lightning.placement.launch import free_port

from ddp_models import Boom, Regression

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason='needs torch.distributed with gloo')

SCRIPT = os.path.join(os.path.dirname(__file__), 'ddp_models.py')


def ddp_trainer(tmp_path, procs=2, **kwargs):
    kwargs.setdefault('max_nb_epochs', 2)
    kwargs.setdefault('nb_sanity_val_steps', 0)
    return Trainer(distributed_backend='ddp', num_processes=procs, default_save_path=tmp_path,
                   progress_bar=False, print_weights_summary=False,
                   process_group_timeout=60, **kwargs)


def one_process_trainer(tmp_path, **kwargs):
    kwargs.setdefault('max_nb_epochs', 2)
    kwargs.setdefault('nb_sanity_val_steps', 0)
    return Trainer(default_save_path=tmp_path, progress_bar=False,
                   print_weights_summary=False, **kwargs)


def assert_same_weights(a, b, atol=1e-5):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=atol), (name, x, y)


def workers_alive():
    """Our worker processes still running (children of this process)."""
    alive = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as file:
                cmd = file.read()
            with open(f'/proc/{pid}/stat') as file:
                state, ppid = file.read().rsplit(')', 1)[1].split()[:2]
        except OSError:
            continue
        if (b'pytorch_lightning.placement._worker' in cmd and state != 'Z'
                and int(ppid) == os.getpid()):
            alive.append(int(pid))
    return alive


# ------------------------------------------------------------------ spawned by fit
def test_two_processes_train_the_weights_of_one_with_the_whole_batch(tmp_path):
    torch.manual_seed(0)
    model = Regression(batch_size=16)
    reference = copy.deepcopy(model)
    reference.batch_size = 32
    one_process_trainer(tmp_path / 'one').fit(reference)

    trainer = ddp_trainer(tmp_path / 'ddp')
    trainer.fit(model)

    assert_same_weights(model, reference)
    # exact evaluation: 131 samples, each evaluated once, the same loss as one process
    assert trainer.callback_metrics['val_count'] == 131
    one = reference.trainer.callback_metrics
    assert abs(float(trainer.callback_metrics['val_loss']) - float(one['val_loss'])) < 1e-5
    # the launching trainer holds rank 0's run: counters, optimizer, callbacks, test()
    assert trainer.current_epoch == reference.trainer.current_epoch
    assert trainer.global_step == reference.trainer.global_step == 2 * 4
    assert trainer.world_size == 1 and trainer.is_global_zero
    test = trainer.test()
    assert test['test_count'] == 131
    saved = tmp_path / 'after.ckpt'
    trainer.save_checkpoint(saved)
    assert torch.load(saved, weights_only=False)['lightning']['trainer_state']['global_step'] == 8
    # one version folder, written by rank 0 only
    versions = sorted(os.listdir(tmp_path / 'ddp' / 'lightning_logs'))
    assert versions == ['version_0']
    folder = tmp_path / 'ddp' / 'lightning_logs' / 'version_0'
    assert (folder / 'checkpoints' / 'last.ckpt').is_file()
    assert workers_alive() == []


def test_ddp_checkpoint_loads_into_one_process_and_back(tmp_path):
    torch.manual_seed(0)
    model = Regression()
    trainer = ddp_trainer(tmp_path, max_nb_epochs=1)
    trainer.fit(model)
    path = tmp_path / 'lightning_logs' / 'version_0' / 'checkpoints' / 'last.ckpt'
    checkpoint = torch.load(path, weights_only=False)
    assert all(not key.startswith('module.') for key in checkpoint['state_dict'])
    assert len(checkpoint['lightning']['ranks']) == 2
    loaded = Regression()
    loaded.load_state_dict(checkpoint['state_dict'])
    assert_same_weights(loaded, model, atol=0)

    # a one-process checkpoint resumes under DDP (it has no per-rank state)
    torch.manual_seed(0)
    single = Regression(batch_size=32)
    one_process_trainer(tmp_path / 'one', max_nb_epochs=1).fit(single)
    one_path = tmp_path / 'one' / 'lightning_logs' / 'version_0' / 'checkpoints' / 'last.ckpt'
    resumed = Regression(batch_size=16)
    more = ddp_trainer(tmp_path / 'resumed', max_nb_epochs=2, resume_from_checkpoint=one_path)
    more.fit(resumed)
    torch.manual_seed(0)
    straight = Regression(batch_size=32)
    one_process_trainer(tmp_path / 'two', max_nb_epochs=2).fit(straight)
    assert_same_weights(resumed, straight)


def test_several_optimizers_and_accumulation_match_one_process(tmp_path):
    torch.manual_seed(0)
    model = Regression(batch_size=8, optimizers=2)
    reference = copy.deepcopy(model)
    reference.batch_size = 16
    one_process_trainer(tmp_path / 'one', accumulate_grad_batches=2).fit(reference)
    trainer = ddp_trainer(tmp_path / 'ddp', accumulate_grad_batches=2)
    trainer.fit(model)
    assert_same_weights(model, reference)
    # the model pickles after a fit (a second DDP fit sends it again): without its trainer
    assert model.trainer is trainer
    clone = pickle.loads(pickle.dumps(model))
    assert 'trainer' not in vars(clone) and 'experiment' not in vars(clone)
    assert_same_weights(clone, model, atol=0)


def test_fit_twice_is_two_runs(tmp_path):
    torch.manual_seed(0)
    model = Regression()
    trainer = ddp_trainer(tmp_path, max_nb_epochs=1)
    trainer.fit(model)
    trainer.fit(model)
    assert sorted(os.listdir(tmp_path / 'lightning_logs')) == ['version_0', 'version_1']
    assert trainer.logger.version == 1


# ------------------------------------------------------------------ failures
@pytest.mark.parametrize('what', ['raise', 'exit', 'kill'])
def test_a_failing_rank_stops_every_rank(tmp_path, what):
    model = Regression(event=(1, 3, what))
    trainer = ddp_trainer(tmp_path, max_nb_epochs=50)
    started = time.monotonic()
    expected = Boom if what == 'raise' else RankFailedError
    with pytest.raises(expected) as info:
        trainer.fit(model)
    assert time.monotonic() - started < 60
    text = str(info.value) + ''.join(getattr(info.value, '__notes__', []))
    assert 'rank 1' in text.lower()
    if what == 'raise':
        assert 'failed on purpose' in text and 'Traceback' in text
    elif what == 'exit':
        assert '3' in text
    else:
        assert 'SIGKILL' in text
    assert workers_alive() == []


def test_a_nan_loss_on_one_rank_ends_every_rank_with_the_same_error(tmp_path):
    model = Regression(event=(1, 2, 'nan'))
    trainer = ddp_trainer(tmp_path, max_nb_epochs=50, add_log_row_interval=2)
    with pytest.raises(NonFiniteLossError, match='ranks'):
        trainer.fit(model)
    assert workers_alive() == []


# ------------------------------------------------------------------ agreement
def test_early_stopping_on_two_ranks(tmp_path):
    class Worsening(Regression):
        def validation_end(self, outputs):
            metrics = super().validation_end(outputs)
            metrics['val_loss'] = metrics['val_loss'] * 0 + self.trainer.current_epoch
            return metrics

    one = one_process_trainer(tmp_path / 'one', max_nb_epochs=20,
                              early_stop_callback=EarlyStopping(patience=1, mode='min'))
    one.fit(Worsening(batch_size=32))
    assert one.current_epoch < 19  # it stopped early
    trainer = ddp_trainer(tmp_path / 'ddp', max_nb_epochs=20,
                          early_stop_callback=EarlyStopping(patience=1, mode='min'))
    trainer.fit(Worsening(batch_size=16))
    assert trainer.current_epoch == one.current_epoch
    assert trainer.state.total_batches == one.state.total_batches


def test_one_rank_asking_to_stop_stops_every_rank_at_the_next_agreed_batch(tmp_path):
    model = Regression(batch_size=4, event=(1, 3, 'stop'))  # 16 batches an epoch
    trainer = ddp_trainer(tmp_path, max_nb_epochs=20, min_nb_epochs=0, add_log_row_interval=5)
    trainer.fit(model)
    # rank 1 asks in batch 3 (counted from 0); the ranks agree after every 5 batches
    assert trainer.state.total_batches == 5
    assert trainer.current_epoch == 0


# ------------------------------------------------------------------ misconfiguration
def test_world_size_that_disagrees_with_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '3')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '3')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    trainer = ddp_trainer(tmp_path)
    with pytest.raises(MisconfigurationException, match=r'3 processes.*num_processes=2.* = 2'):
        trainer.fit(Regression())


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_processes=2), "distributed_backend='ddp'"),
    (dict(distributed_backend='ddp2'), "'ddp2'"),
    (dict(distributed_backend='ddp', process_group_timeout=0), 'process_group_timeout'),
    (dict(find_unused_parameters=True), "distributed_backend='ddp'"),
])
def test_distributed_arguments_are_checked(tmp_path, kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        Trainer(default_save_path=tmp_path, **kwargs)


def test_several_nodes_need_a_launcher(tmp_path):
    trainer = ddp_trainer(tmp_path, nb_gpu_nodes=2)
    with pytest.raises(MisconfigurationException, match='torchrun'):
        trainer.fit(Regression())


def test_an_unpicklable_model_is_reported_before_any_process_starts(tmp_path):
    model = Regression()
    model.log_file = open(tmp_path / 'notes.txt', 'w')
    try:
        with pytest.raises(MisconfigurationException, match='cannot be pickled'):
            ddp_trainer(tmp_path).fit(model)
    finally:
        model.log_file.close()


# ------------------------------------------------------------------ launched from outside
def run_script(args, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    full_env['PYTHONPATH'] = os.pathsep.join(sys.path)
    return subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_result(out):
    with open(out / 'result.json') as file:
        return json.load(file)


def assert_ranks_agree(out, ranks=2):
    weights = [torch.load(out / f'weights_rank{r}.pt') for r in range(ranks)]
    for other in weights[1:]:
        for key in weights[0]:
            assert torch.equal(weights[0][key], other[key])


def test_torchrun_two_processes(tmp_path):
    done = run_script([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                       '--nproc_per_node=2', SCRIPT, str(tmp_path), '--test'])
    assert done.returncode == 0, done.stderr[-3000:]
    result = read_result(tmp_path)
    assert result['world_size'] == 2 and result['val_count'] == 131
    assert result['test_count'] == 131
    assert_ranks_agree(tmp_path)
    assert sorted(os.listdir(tmp_path / 'lightning_logs')) == ['version_0']


def test_torchrun_as_two_nodes_on_localhost(tmp_path):
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', f'--node_rank={node}',
         '--nproc_per_node=1', '--master_addr=127.0.0.1', f'--master_port={port}',
         SCRIPT, str(tmp_path), '--procs', '1', '--nodes', '2'],
        env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    outputs = [node.communicate(timeout=120)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert read_result(tmp_path)['world_size'] == 2
    assert_ranks_agree(tmp_path)


def test_a_failing_rank_under_torchrun_fails_the_job_with_its_traceback(tmp_path):
    done = run_script([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                       '--nproc_per_node=2', SCRIPT, str(tmp_path), '--inject', '1,3,raise',
                       '--epochs', '50'])
    assert done.returncode != 0
    assert 'Boom: rank 1 failed on purpose at batch 3' in done.stdout + done.stderr


def slurm_env(rank, port, job='4242', tasks=2, **extra):
    return {'SLURM_JOB_ID': job, 'SLURM_PROCID': str(rank), 'SLURM_LOCALID': str(rank),
            'SLURM_NODEID': '0', 'SLURM_NTASKS': str(tasks), 'SLURM_NTASKS_PER_NODE': str(tasks),
            'SLURM_STEP_ID': '0', 'SLURM_NODELIST': 'localhost', 'MASTER_PORT': str(port),
            **extra}


def start_slurm_ranks(out, args=(), tasks=2, **extra):
    port = free_port()
    return [subprocess.Popen(
        [sys.executable, SCRIPT, str(out), *args],
        env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path),
             **slurm_env(rank, port, tasks=tasks, **extra)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(tasks)]


def finish(procs, timeout=120):
    outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    return [proc.returncode for proc in procs], outputs


def test_a_simulated_slurm_job_with_two_tasks(tmp_path):
    codes, outputs = finish(start_slurm_ranks(tmp_path))
    assert codes == [0, 0], outputs
    result = read_result(tmp_path)
    assert result['version'] == 4242 and result['world_size'] == 2
    assert sorted(os.listdir(tmp_path / 'lightning_logs')) == ['version_4242']
    assert_ranks_agree(tmp_path)
    # one process wrote the logs: TensorBoard files are named after their writer's pid
    events = os.listdir(tmp_path / 'lightning_logs' / 'version_4242' / 'tf')
    assert events and len({name.split('.')[-2] for name in events}) == 1


def test_a_dead_srun_task_without_kill_on_bad_exit_does_not_hang_the_other(tmp_path):
    """Without srun -K nobody kills rank 0: its next collective fails (the peer's socket
    closed, at the latest after process_group_timeout) and it exits non-zero."""
    codes, outputs = finish(start_slurm_ranks(tmp_path, ['--inject', '1,3,exit',
                                                         '--epochs', '50']), timeout=90)
    assert codes[1] == 3 and codes[0] not in (0, None), outputs


def test_sigusr1_round_trip_under_ddp(tmp_path, fake_scontrol):
    path, calls = fake_scontrol
    out = tmp_path / 'run'
    # rank 1 alone receives SIGUSR1 (after batch 3): every rank stops at the next agreed batch
    codes, outputs = finish(start_slurm_ranks(out, ['--inject', '1,3,usr1', '--epochs', '3'],
                                              PATH=path))
    assert codes == [0, 0], outputs
    assert calls.read_text().split() == ['requeue', '4242']
    checkpoints = out / 'lightning_logs' / 'version_4242' / 'checkpoints'
    assert (checkpoints / 'hpc_ckpt_1.ckpt').is_file()
    assert not (out / 'result.json').exists()  # the preempted run ended early, with exit 0
    # the requeued job: every rank resumes from the HPC checkpoint and finishes
    codes, outputs = finish(start_slurm_ranks(out, ['--epochs', '3'], PATH=path))
    assert codes == [0, 0], outputs
    assert 'resumed from' in outputs[0]
    straight = tmp_path / 'straight'
    codes, _ = finish(start_slurm_ranks(straight, ['--epochs', '3'], PATH=path))
    for rank in range(2):
        a = torch.load(out / f'weights_rank{rank}.pt')
        b = torch.load(straight / f'weights_rank{rank}.pt')
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigusr1_to_a_batch_script_that_spawned_its_ranks(tmp_path, fake_scontrol):
    """`python train.py` in an sbatch script (no srun): fit spawns the ranks, SLURM signals
    the script, the ranks save and requeue, and the script exits 0."""
    path, calls = fake_scontrol
    env = {'SLURM_JOB_ID': '77', 'SLURM_NTASKS': '2', 'PATH': path}
    done = run_script([sys.executable, SCRIPT, str(tmp_path / 'run'), '--inject', '1,3,usr1parent',
                       '--epochs', '3'], env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert calls.read_text().split() == ['requeue', '77']
    assert (tmp_path / 'run' / 'lightning_logs' / 'version_77' / 'checkpoints' /
            'hpc_ckpt_1.ckpt').is_file()
    assert not (tmp_path / 'run' / 'result.json').exists()


@pytest.mark.parametrize('launcher, workers', [('fit', 0), ('fit', 1), ('torchrun', 0)])
def test_sigkill_of_the_whole_job_then_resume_is_bit_exact(tmp_path, launcher, workers):
    """Shuffled, random noise drawn from each rank's own RNG, with persistent DataLoader
    workers or none; the ranks spawned by fit or started by torchrun."""
    common = ['--shuffle', '--noise', '--epochs', '2', '--workers', str(workers)]
    start = [sys.executable]
    if launcher == 'torchrun':
        start += ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    straight = tmp_path / 'straight'
    done = run_script([*start, SCRIPT, str(straight), *common])
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / 'killed'
    # last.ckpt after every step; the whole job is killed by SIGKILL in batch 6 of 8
    proc = subprocess.Popen(
        [*start, SCRIPT, str(killed), *common, '--every-n-steps', '1',
         '--inject', '0,6,killgroup'],
        env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path), 'TMPDIR': str(tmp_path)},
        start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == -signal.SIGKILL, output
    last = killed / 'ckpt' / 'last.ckpt'
    assert last.is_file()
    assert torch.load(last, weights_only=False)['lightning']['trainer_state']['total_batches'] == 6

    done = run_script([*start, SCRIPT, str(killed), *common, '--resume', str(last)])
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(killed / 'weights_rank0.pt')
    b = torch.load(straight / 'weights_rank0.pt')
    assert all(torch.equal(a[k], b[k]) for k in a)


NOTEBOOK_CELL = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from pytorch_lightning import RootModule, Trainer

print('BEFORE FIT')


class CellModel(RootModule):  # defined in __main__, which has no file (like a notebook)
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_nb):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_nb):
        x, y = batch
        return {'val_loss': nn.functional.mse_loss(self.layer(x), y), 'n': len(x)}

    def validation_end(self, outputs):
        return {'val_loss': sum(o['val_loss'] for o in outputs) / len(outputs),
                'val_n': sum(o['n'] for o in outputs)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def tng_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8)

    val_dataloader = tng_dataloader


trainer = Trainer(distributed_backend='ddp', num_processes=2, max_nb_epochs=1,
                  experiment=False, checkpoint_callback=False, progress_bar=False,
                  print_weights_summary=False, nb_sanity_val_steps=0)
trainer.fit(CellModel())
print('AFTER FIT', trainer.callback_metrics['val_n'], trainer.global_step)
'''


def test_fit_from_code_without_a_file_runs_only_the_fit_in_the_ranks(tmp_path):
    """As in a notebook: the model class lives in a __main__ without a file, and the code
    around fit runs once, in the launching process."""
    done = subprocess.run([sys.executable, '-'], input=NOTEBOOK_CELL, text=True,
                          capture_output=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('BEFORE FIT') == 1
    assert 'AFTER FIT 32 2' in done.stdout  # 32 samples evaluated once; 2 steps of 2x8

"""Launching: which world the environment describes (torchrun, srun, our spawn), Slurm node
lists, and spawn_ranks with its failure paths (a raising rank, os._exit, SIGKILL, no result,
Ctrl-C, a timeout, a dead parent). Each spawn starts fresh interpreters (about a second each)."""
import dataclasses
import fcntl
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from pytorch_lightning.exceptions import MisconfigurationException
from pytorch_lightning.placement import launch
from pytorch_lightning.placement.launch import (ClusterEnvironment, RankFailedError,
                                                detect_environment, free_port,
                                                parse_slurm_nodelist, spawn_ranks)

REPO = pathlib.Path(__file__).resolve().parent.parent
LIMIT_S = 120  # spawn_ranks' timeout in the tests: a hang fails the test instead of the suite


# ----------------------------------------------------------------------------------------------
# detect_environment

TORCHRUN = dict(RANK='3', LOCAL_RANK='1', WORLD_SIZE='4', LOCAL_WORLD_SIZE='2', GROUP_RANK='1',
                MASTER_ADDR='host-a', MASTER_PORT='29500')

# what srun sets for the task of rank 3 in a step of 2 nodes x 2 tasks
SRUN = dict(SLURM_JOB_ID='123456', SLURM_STEP_ID='0', SLURM_PROCID='3', SLURM_LOCALID='1',
            SLURM_NODEID='1', SLURM_NTASKS='4', SLURM_TASKS_PER_NODE='2(x2)',
            SLURM_STEP_NODELIST='gpu[07-08]', SLURM_NODELIST='gpu[07-08]')


def test_no_launcher_variables_mean_no_world():
    assert detect_environment({}) is None
    assert detect_environment({'PATH': '/usr/bin', 'SLURM_JOB_ID': '5'}) is None


def test_torchrun_variables():
    assert detect_environment(TORCHRUN) == ClusterEnvironment(
        rank=3, local_rank=1, world_size=4, local_world_size=2, node_rank=1,
        master_addr='host-a', master_port=29500, source='torchrun')


def test_torchrun_without_local_world_size_and_group_rank_is_one_node():
    env = dict(TORCHRUN, RANK='1', WORLD_SIZE='2')
    del env['LOCAL_WORLD_SIZE'], env['GROUP_RANK']
    found = detect_environment(env)
    assert (found.local_world_size, found.node_rank) == (2, 0)


def test_our_spawn_is_told_apart_from_torchrun():
    assert detect_environment(dict(TORCHRUN, PL_SPAWNED='1')).source == 'spawn'


def test_torchrun_under_srun_is_torchrun():
    """``srun torchrun ...``: one srun task per node, torchrun's variables describe the ranks."""
    found = detect_environment(dict(SRUN, **TORCHRUN))
    assert (found.source, found.rank, found.world_size) == ('torchrun', 3, 4)


@pytest.mark.parametrize('change, named', [
    ({'MASTER_PORT': None}, 'MASTER_PORT'),
    ({'LOCAL_RANK': None, 'MASTER_ADDR': None}, 'LOCAL_RANK, MASTER_ADDR'),
    ({'RANK': 'one'}, "RANK='one'"),
    ({'RANK': '4'}, "RANK='4'"),
    ({'WORLD_SIZE': '0'}, "WORLD_SIZE='0'"),
    ({'LOCAL_RANK': '2'}, "LOCAL_RANK='2'"),
    ({'MASTER_PORT': '70000'}, "MASTER_PORT='70000'"),
])
def test_malformed_torchrun_variables_are_named(change, named):
    env = {key: value for key, value in dict(TORCHRUN, **change).items() if value is not None}
    with pytest.raises(MisconfigurationException, match=named):
        detect_environment(env)


def test_srun_variables():
    assert detect_environment(SRUN) == ClusterEnvironment(
        rank=3, local_rank=1, world_size=4, local_world_size=2, node_rank=1,
        master_addr='gpu07', master_port=13456, source='slurm')


def test_srun_port_follows_the_job_id():
    ports = {detect_environment(dict(SRUN, SLURM_JOB_ID=job)).master_port
             for job in ('1000', '1001', '1002')}
    assert len(ports) == 3 and all(10000 <= port < 30000 for port in ports)


def test_master_addr_and_port_from_the_environment_win_under_srun():
    found = detect_environment(dict(SRUN, MASTER_ADDR='10.0.0.9', MASTER_PORT='31000'))
    assert (found.master_addr, found.master_port) == ('10.0.0.9', 31000)


def test_srun_with_uneven_tasks_per_node_takes_this_nodes_count():
    env = dict(SRUN, SLURM_NTASKS='3', SLURM_PROCID='2', SLURM_LOCALID='0',
               SLURM_TASKS_PER_NODE='2,1')
    assert detect_environment(env).local_world_size == 1


def test_srun_step_variables_come_before_the_allocations():
    env = dict(SRUN, SLURM_STEP_TASKS_PER_NODE='3(x2)', SLURM_STEP_NUM_TASKS='6',
               SLURM_STEP_NODELIST='b[1-2]', SLURM_NODELIST='a[1-4]')
    found = detect_environment(env)
    assert (found.world_size, found.local_world_size, found.master_addr) == (6, 3, 'b1')


def test_srun_with_only_ntasks_per_node():
    env = dict(SRUN, SLURM_NTASKS_PER_NODE='2')
    del env['SLURM_TASKS_PER_NODE']
    assert detect_environment(env).local_world_size == 2


@pytest.mark.parametrize('env', [
    {key: value for key, value in SRUN.items() if key != 'SLURM_STEP_ID'},  # sbatch script
    {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '2'},
    dict(SRUN, SLURM_NTASKS='1', SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_NODEID='0'),
    dict(SRUN, SLURM_STEP_NUM_TASKS='1', SLURM_PROCID='0'),  # a shell step in `salloc -n 4`
], ids=['sbatch-without-srun', 'only-ntasks', 'srun-one-task', 'interactive-step'])
def test_slurm_without_an_srun_world_runs_alone(env):
    assert detect_environment(env) is None


@pytest.mark.parametrize('change, named', [
    ({'SLURM_PROCID': 'x'}, "SLURM_PROCID='x'"),
    ({'SLURM_PROCID': '4'}, "SLURM_PROCID='4'"),
    ({'SLURM_NTASKS': 'four'}, "SLURM_NTASKS='four'"),
    ({'SLURM_LOCALID': '2'}, "SLURM_LOCALID='2'"),
    ({'SLURM_TASKS_PER_NODE': '2(x)'}, 'SLURM_TASKS_PER_NODE'),
    ({'SLURM_NODEID': '2'}, 'SLURM_NODEID=2'),
    ({'SLURM_STEP_NODELIST': 'gpu[07-'}, 'SLURM_STEP_NODELIST'),
    ({'SLURM_JOB_ID': None}, 'MASTER_PORT'),
    ({'SLURM_JOB_ID': 'abc'}, "SLURM_JOB_ID='abc'"),
    ({'SLURM_STEP_NODELIST': None, 'SLURM_NODELIST': None}, 'SLURM_NODELIST'),
])
def test_malformed_slurm_variables_are_named(change, named):
    env = {key: value for key, value in dict(SRUN, **change).items() if value is not None}
    with pytest.raises(MisconfigurationException, match=named.replace('(', r'\(')
                       .replace('[', r'\[')):
        detect_environment(env)


@pytest.mark.parametrize('text, hosts', [
    ('node01', ['node01']),
    ('node[01-04,07]', ['node01', 'node02', 'node03', 'node04', 'node07']),
    ('gpu-a[1-2],gpu-b3', ['gpu-a1', 'gpu-a2', 'gpu-b3']),
    ('n[001-003]-ib', ['n001-ib', 'n002-ib', 'n003-ib']),
    ('r[1-2]n[08-09]', ['r1n08', 'r1n09', 'r2n08', 'r2n09']),
    ('node[8-11]', ['node8', 'node9', 'node10', 'node11']),
    ('node[098-101]', ['node098', 'node099', 'node100', 'node101']),
    ('a,b[2],c', ['a', 'b2', 'c']),
    ('x[3]', ['x3']),
    (' login1 ', ['login1']),
    ('cn[1-2],gpu[10-11]-ib,big', ['cn1', 'cn2', 'gpu10-ib', 'gpu11-ib', 'big']),
])
def test_slurm_nodelist_forms(text, hosts):
    assert parse_slurm_nodelist(text) == hosts


@pytest.mark.parametrize('text', ['', 'node[1-', 'node]1', 'node[a-b]', 'node[3-1]',
                                  'node[[1]]', 'a,,b', 'node[]', 'node[1,]'])
def test_malformed_slurm_nodelists(text):
    with pytest.raises(ValueError):
        parse_slurm_nodelist(text)


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', port))
    assert 0 < port < 65536


# ----------------------------------------------------------------------------------------------
# spawn_ranks

class RankOneError(ValueError):
    """Defined at module level: pickled by reference."""


class NeedsTwoArguments(Exception):
    """Pickles, but cannot be rebuilt from its args (``str(a/b)``) when unpickled."""

    def __init__(self, a, b):
        super().__init__(f'{a}/{b}')


def running(pid):
    """Whether process ``pid`` exists and is not a zombie (a killed orphan may stay a zombie
    when nothing reaps it)."""
    try:
        stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(')', 1)[1].split()[0] not in ('Z', 'X')


def still_running(pids, seconds=30):
    """The pids still running after waiting (bounded) for them to end. A process that was sent
    SIGKILL may take a moment to die on a busy machine."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and any(running(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if running(pid)]


def wait_for(paths, seconds=60):
    """Wait until every path exists (bounded); whether they all do."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if all(os.path.exists(path) for path in paths):
            return True
        time.sleep(0.05)
    return False


def pids_in(folder, pattern='pid-*'):
    return [int(path.read_text()) for path in pathlib.Path(folder).glob(pattern)
            if path.read_text()]


def write_pid(folder, name=None):
    path = pathlib.Path(folder) / (name or f'pid-{os.environ["RANK"]}')
    path.with_suffix('.tmp').write_text(str(os.getpid()))
    os.replace(path.with_suffix('.tmp'), path)


def test_two_ranks_return_rank_zero_value_and_see_their_own_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('PL_TEST_INHERITED', 'yes')
    monkeypatch.setenv('MASTER_PORT', '1')  # the argument comes first
    port = free_port()

    class Box:  # a local class: it travels by value and comes back as the same class
        def __init__(self, rank, tensor):
            self.rank, self.tensor = rank, tensor

    def work():  # a closure over tmp_path
        seen = {name: os.environ.get(name) for name in (
            'RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR',
            'MASTER_PORT', 'PL_SPAWNED', 'PL_TEST_INHERITED')}
        seen['detected'] = dataclasses.asdict(detect_environment())
        (tmp_path / f'rank{os.environ["RANK"]}.json').write_text(json.dumps(seen))
        rank = int(os.environ['RANK'])
        return Box(rank, torch.arange(3) * (rank + 1))

    result = spawn_ranks(work, 2, timeout_s=LIMIT_S, master_port=port)
    assert isinstance(result, Box) and result.rank == 0
    assert torch.equal(result.tensor, torch.arange(3))
    for rank in (0, 1):
        seen = json.loads((tmp_path / f'rank{rank}.json').read_text())
        assert seen.pop('detected') == dict(
            rank=rank, local_rank=rank, world_size=2, local_world_size=2, node_rank=0,
            master_addr='127.0.0.1', master_port=port, source='spawn')
        assert seen == dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2',
                            LOCAL_WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                            MASTER_PORT=str(port), PL_SPAWNED='1', PL_TEST_INHERITED='yes')


def test_a_raising_rank_reraises_its_exception_with_rank_and_traceback(tmp_path):
    class LocalError(KeyError):  # by value, and its cause by reference
        pass

    class Stopped(Exception):
        pass

    def raise_on_rank_one():
        if os.environ['RANK'] == '1':
            try:
                raise RankOneError('the root cause')
            except RankOneError as err:
                raise LocalError('rank one failed') from err

        def on_term(signum, frame):  # rank 0 fails too, later, of our SIGTERM
            raise Stopped('terminated by the parent')
        signal.signal(signal.SIGTERM, on_term)
        time.sleep(600)

    with pytest.raises(LocalError) as caught:
        spawn_ranks(raise_on_rank_one, 2, timeout_s=LIMIT_S)
    exc = caught.value
    assert type(exc) is LocalError and exc.args == ('rank one failed',)
    assert type(exc.__cause__) is RankOneError and exc.__cause__.args == ('the root cause',)
    assert exc.rank == 1
    # a function sent by value shows as "<dynamic-code>" (cloudpickle drops its file name)
    assert 'in raise_on_rank_one' in exc.child_traceback
    assert "LocalError: 'rank one failed'" in exc.child_traceback
    assert 'RankOneError: the root cause' in exc.child_traceback
    assert exc.__notes__ == [f'Raised on rank 1 of 2 (spawn_ranks). Its traceback there:\n'
                             f'{exc.child_traceback}']


def test_an_exception_that_cannot_be_rebuilt_becomes_rank_failed_error():
    def fail():
        if os.environ['RANK'] == '1':
            raise NeedsTwoArguments('x', 'y')
        time.sleep(600)

    with pytest.raises(RankFailedError, match=r'Rank 1 of 2 raised test_launch\.'
                                              r'NeedsTwoArguments: x/y') as caught:
        spawn_ranks(fail, 2, timeout_s=LIMIT_S)
    assert caught.value.rank == 1 and caught.value.exitcode == 1
    assert 'NeedsTwoArguments: x/y' in caught.value.child_traceback


def test_os_exit_names_rank_and_code_and_leaves_no_process(tmp_path):
    def exit_on_rank_one():
        if os.environ['RANK'] == '0':
            helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
            (tmp_path / 'pid-helper').write_text(str(helper.pid))
            write_pid(tmp_path)
            time.sleep(600)
        write_pid(tmp_path)
        wait_for([tmp_path / 'pid-0'])
        os._exit(3)

    with pytest.raises(RankFailedError, match='Rank 1 of 2 exited with code 3') as caught:
        spawn_ranks(exit_on_rank_one, 2, timeout_s=LIMIT_S)
    assert (caught.value.rank, caught.value.exitcode) == (1, 3)
    pids = pids_in(tmp_path)
    assert len(pids) == 3  # both ranks and the helper rank 0 started
    assert not still_running(pids)


def rank_one_takes_rank_zero_down(tmp_path, exit_delay):
    """A function for two ranks: rank 1 holds a lock that rank 0 waits on (as a collective
    waits on its peer's socket), releases it (an exit closes it; with ``exit_delay`` it
    unlocks first and exits that much later) and exits with code 3 without a report; rank 0
    raises ConnectionError as soon as it gets the lock."""
    def run():
        with open(tmp_path / 'held-by-rank-1', 'a') as held:
            if os.environ['RANK'] == '1':
                fcntl.flock(held, fcntl.LOCK_EX)
            write_pid(tmp_path)
            if not wait_for([tmp_path / 'pid-0', tmp_path / 'pid-1']):
                return
            if os.environ['RANK'] == '1':
                if exit_delay:
                    fcntl.flock(held, fcntl.LOCK_UN)
                    time.sleep(exit_delay)
                os._exit(3)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                try:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.001)
        raise ConnectionError('rank 1 is gone')
    return run


def test_the_first_rank_to_fail_is_named_not_the_one_it_took_down(tmp_path):
    """Rank 0 raises as soon as rank 1's files are closed by its exit, as a collective whose
    peer's socket closes does; the parent often sees both at once, and must name rank 1."""
    with pytest.raises(RankFailedError, match='Rank 1 of 2 exited with code 3'):
        spawn_ranks(rank_one_takes_rank_zero_down(tmp_path, 0), 2, timeout_s=LIMIT_S)


def test_a_rank_that_dies_just_after_its_peer_raised_is_still_named(tmp_path):
    """Under load a dying rank's sockets can close well before its exit is visible, so the
    peer it took down reports first: here rank 1 releases what rank 0 waits on, then exits
    without a report 0.3 s later. The parent waits FAILURE_SETTLE_S for such a death and names
    rank 1, not rank 0's consequential error."""
    with pytest.raises(RankFailedError, match='Rank 1 of 2 exited with code 3'):
        spawn_ranks(rank_one_takes_rank_zero_down(tmp_path, 0.3), 2, timeout_s=LIMIT_S)


def test_sigkill_names_the_signal():
    def kill_rank_one():
        if os.environ['RANK'] == '1':
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)

    with pytest.raises(RankFailedError, match='Rank 1 of 2 was killed by SIGKILL') as caught:
        spawn_ranks(kill_rank_one, 2, timeout_s=LIMIT_S)
    assert caught.value.exitcode == -signal.SIGKILL


def test_rank_zero_exiting_without_a_result(tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv('MASTER_PORT', str(port))

    def leave():
        (tmp_path / f'port{os.environ["RANK"]}').write_text(os.environ['MASTER_PORT'])
        if os.environ['RANK'] == '0':
            sys.exit(0)
        return 'not rank 0'

    with pytest.raises(RankFailedError, match='Rank 0 of 2 exited with code 0 but handed back '
                                              'no result'):
        spawn_ranks(leave, 2, timeout_s=LIMIT_S)
    assert [(tmp_path / f'port{rank}').read_text() for rank in (0, 1)] == [str(port)] * 2


def test_a_function_that_does_not_pickle_is_refused_before_starting():
    lock = threading.Lock()
    with pytest.raises(MisconfigurationException, match='could not pickle'):
        spawn_ranks(lambda: lock.locked(), 2)


@pytest.mark.parametrize('kwargs, named', [
    (dict(nprocs=0), 'nprocs=0'), (dict(nprocs='2'), "nprocs='2'"),
    (dict(nprocs=True), 'nprocs=True'), (dict(nprocs=2, timeout_s=0), 'timeout_s=0'),
    (dict(nprocs=2, master_port=70000), 'master_port=70000'),
])
def test_spawn_arguments_are_checked(kwargs, named):
    with pytest.raises(MisconfigurationException, match=named):
        spawn_ranks(lambda: None, **kwargs)


def test_timeout_stops_every_rank(tmp_path):
    def hang():
        write_pid(tmp_path)
        time.sleep(600)

    with pytest.raises(TimeoutError, match='did not finish within timeout_s=4'):
        spawn_ranks(hang, 2, timeout_s=4)
    assert not still_running(pids_in(tmp_path))


def test_ctrl_c_interrupts_the_ranks_and_is_reraised(tmp_path, monkeypatch):
    """Rank 0 stops on the SIGINT; rank 1 ignores it and is killed after the grace period
    (with SIGKILL straight away: no SIGTERM after an interrupt)."""
    monkeypatch.setattr(launch, 'INTERRUPT_GRACE_S', 2)

    def wait_for_ctrl_c():
        rank = os.environ['RANK']
        if rank == '1':
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, lambda *_: (tmp_path / 'sigterm-1').write_text('yes'))
        write_pid(tmp_path)
        try:
            time.sleep(600)
        except KeyboardInterrupt:  # what a fit does here: save its logs
            (tmp_path / f'interrupted-{os.environ["RANK"]}').write_text('yes')
            raise

    def press_ctrl_c():
        if wait_for([tmp_path / 'pid-0', tmp_path / 'pid-1']):
            os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    # Python's own Ctrl-C handler, which a shell leaves out when it starts pytest in the
    # background (SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            spawn_ranks(wait_for_ctrl_c, 2, timeout_s=LIMIT_S)
    finally:
        signal.signal(signal.SIGINT, previous)
        presser.join(timeout=LIMIT_S)
    assert (tmp_path / 'interrupted-0').exists()
    assert not (tmp_path / 'interrupted-1').exists() and not (tmp_path / 'sigterm-1').exists()
    assert not still_running(pids_in(tmp_path))


def test_sigusr1_is_passed_on_and_sigint_is_armed_in_the_ranks(tmp_path):
    """SLURM's preemption warning may reach only the launching process. A launching process
    started in the background by a shell ignores SIGINT, and its children would inherit
    that; the ranks still take the SIGINT that passes on Ctrl-C."""
    def wait_for_sigusr1():
        sigint_armed = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        marker = tmp_path / f'usr1-{os.environ["RANK"]}'
        signal.signal(signal.SIGUSR1, lambda signum, frame: marker.write_text('yes'))
        write_pid(tmp_path)
        return wait_for([marker]), sigint_armed

    def send_sigusr1():
        if wait_for([tmp_path / 'pid-0', tmp_path / 'pid-1']):
            os.kill(os.getpid(), signal.SIGUSR1)

    before = signal.getsignal(signal.SIGUSR1)
    sender = threading.Thread(target=send_sigusr1)
    sender.start()
    sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert spawn_ranks(wait_for_sigusr1, 2, timeout_s=LIMIT_S) == (True, True)
    finally:
        signal.signal(signal.SIGINT, sigint)
        sender.join(timeout=LIMIT_S)
    assert (tmp_path / 'usr1-1').read_text() == 'yes'
    assert signal.getsignal(signal.SIGUSR1) is before


SCRIPT = """
import os, sys, time
sys.path.insert(0, sys.argv[3])  # as a notebook finds a checkout: not through PYTHONPATH
from pytorch_lightning.placement.launch import spawn_ranks

folder, mode = sys.argv[1], sys.argv[2]
with open(os.path.join(folder, 'script-runs'), 'a') as file:
    file.write('run\\n')


class Point:  # defined in __main__: travels by value
    def __init__(self, rank):
        self.rank = rank


def work():
    with open(os.path.join(folder, 'pid-' + os.environ['RANK']), 'w') as file:
        file.write(str(os.getpid()))
    if mode == 'hang':
        time.sleep(600)
    return Point(int(os.environ['RANK'])), sys.modules['pytorch_lightning'].__file__


result, package = spawn_ranks(work, 2, timeout_s=300)
same = package == sys.modules['pytorch_lightning'].__file__
print('result', type(result) is Point, result.rank, 'same package' if same else package)
"""


def run_script(tmp_path, mode):
    script = tmp_path / 'train.py'
    script.write_text(textwrap.dedent(SCRIPT))
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    # output to a file: a pipe would stay open as long as any rank lives
    with open(tmp_path / 'out.txt', 'w') as out:
        return subprocess.Popen([sys.executable, str(script), str(tmp_path), mode, str(REPO)],
                                env=env, stdout=out, cwd=tmp_path)


def test_a_script_is_not_run_again_in_the_ranks_and_its_classes_travel(tmp_path):
    """The script finds this checkout through sys.path only (as a notebook does)."""
    proc = run_script(tmp_path, 'return')
    assert proc.wait(timeout=LIMIT_S) == 0
    # the ranks import the parent's copy of the package, not another installed one
    assert (tmp_path / 'out.txt').read_text().strip() == 'result True 0 same package'
    assert (tmp_path / 'script-runs').read_text() == 'run\n'


def test_ranks_do_not_outlive_a_killed_parent(tmp_path):
    proc = run_script(tmp_path, 'hang')
    try:
        assert wait_for([tmp_path / 'pid-0', tmp_path / 'pid-1'])
        pids = pids_in(tmp_path)
        # python -m ..._worker WORKDIR RANK PARENT_PID: the folder the dead parent leaves
        workdir = pathlib.Path(f'/proc/{pids[0]}/cmdline').read_bytes().split(b'\0')[3]
        assert os.path.isdir(workdir)
    finally:
        proc.kill()
        proc.wait(timeout=LIMIT_S)
    assert not still_running(pids, seconds=60)  # a bound: they go within ~1 s
    assert not os.path.exists(workdir)

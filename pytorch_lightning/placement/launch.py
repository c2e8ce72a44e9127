"""Launching several processes: which world this process belongs to (torchrun, SLURM ``srun``
or our own spawn), and starting the ranks ourselves when nothing else did.

Nothing here imports ``torch.distributed``: the world part joins the process group; this module
only reads environment variables and starts, watches and stops processes. It is imported
lazily (only for a distributed run), so ``import pytorch_lightning`` does not pay for it.

``spawn_ranks`` starts each rank as a fresh interpreter running
``python -m pytorch_lightning.placement._worker`` (never ``multiprocessing``), so the user's
script is not imported or run again in the children, CUDA works in them, and a function or
class defined in ``__main__`` or a notebook travels by value (``cloudpickle``). The parent and
the children talk only through files in a temporary directory:

- ``payload.pkl``: the parent's ``sys.path`` and the pickled function;
- ``result.pkl``: what rank 0's function returned;
- ``error-<rank>.pkl``: a rank's exception, its traceback text and when it failed.
"""
import dataclasses
import os
import pickle
import re
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time

from ..exceptions import MisconfigurationException, RankFailedError  # noqa: F401 (re-exported)

POLL_S = 0.05  # how often the parent looks at its children
TERMINATE_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
INTERRUPT_GRACE_S = 15.0  # after Ctrl-C: how long the children get to save their logs
#: After the first failure seen is an exception report: how long to wait for a rank that died
#: without one (its exit closed the sockets that made the reporting rank raise).
FAILURE_SETTLE_S = 1.0
FORWARDED_SIGNALS = (signal.SIGUSR1,)  # passed on to the ranks while spawn_ranks waits
SLURM_PORT_BASE, SLURM_PORT_SPAN = 10000, 20000  # below Linux's ephemeral ports (32768+)

PAYLOAD_FILE = 'payload.pkl'
RESULT_FILE = 'result.pkl'
WORKER_MODULE = 'pytorch_lightning.placement._worker'
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class ClusterEnvironment:
    """The world this process belongs to, as the launcher described it.

    ``source`` says who started the process: ``'torchrun'``, ``'slurm'`` (``srun``) or
    ``'spawn'`` (``spawn_ranks``)."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    source: str


# ----------------------------------------------------------------------------------------------
# Which world this process is in

def detect_environment(environ=None):
    """The world described by the environment variables (``os.environ`` by default), or
    ``None`` when they describe none, so the process runs alone or spawns its ranks.

    - torchrun (and ``spawn_ranks``, which also sets ``PL_SPAWNED=1``): ``RANK``,
      ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; ``LOCAL_WORLD_SIZE`` and
      ``GROUP_RANK`` (or ``NODE_RANK``) when present.
    - SLURM, only for a process that ``srun`` started (``SLURM_STEP_ID`` and ``SLURM_PROCID``
      set) in a step of more than one task. A plain ``python train.py`` in an ``sbatch`` script
      has no ``SLURM_STEP_ID`` and runs alone, so nothing waits for ranks that never start.

    Raises ``MisconfigurationException`` naming the variable when a value is missing or
    malformed."""
    env = os.environ if environ is None else environ
    if 'RANK' in env or 'WORLD_SIZE' in env:
        return _torchrun_environment(env)
    if 'SLURM_STEP_ID' in env and 'SLURM_PROCID' in env:
        return _slurm_environment(env)
    return None


def _torchrun_environment(env):
    missing = [name for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                                 'MASTER_PORT') if not env.get(name)]
    if missing:
        raise MisconfigurationException(
            f"The environment sets {'RANK' if 'RANK' in env else 'WORLD_SIZE'}, as torchrun "
            f"does, but not {', '.join(missing)}. Launch with torchrun (which sets RANK, "
            f"WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), set the missing variables, "
            f"or unset RANK and WORLD_SIZE to run without a launcher.")
    world_size = _int_var(env, 'WORLD_SIZE', minimum=1)
    rank = _int_var(env, 'RANK', below=(world_size, 'WORLD_SIZE'))
    local_world_size = (_int_var(env, 'LOCAL_WORLD_SIZE', minimum=1)
                        if env.get('LOCAL_WORLD_SIZE') else world_size)
    local_rank = _int_var(env, 'LOCAL_RANK', below=(local_world_size, 'LOCAL_WORLD_SIZE'))
    node_name = next((name for name in ('GROUP_RANK', 'NODE_RANK') if env.get(name)), None)
    node_rank = (_int_var(env, node_name) if node_name
                 else (rank - local_rank) // local_world_size)
    return ClusterEnvironment(
        rank=rank, local_rank=local_rank, world_size=world_size,
        local_world_size=local_world_size, node_rank=node_rank,
        master_addr=env['MASTER_ADDR'], master_port=_port_var(env, 'MASTER_PORT'),
        source='spawn' if env.get('PL_SPAWNED') == '1' else 'torchrun')


def _slurm_environment(env):
    # the step's own task count first: an interactive shell inside `salloc -n 2` is a step of
    # one task although the allocation's SLURM_NTASKS says 2
    count_name = next((name for name in ('SLURM_STEP_NUM_TASKS', 'SLURM_NTASKS')
                       if env.get(name)), None)
    if count_name is None:
        return None
    world_size = _int_var(env, count_name, minimum=1)
    if world_size == 1:
        return None
    rank = _int_var(env, 'SLURM_PROCID', below=(world_size, count_name))
    node_rank = _int_var(env, 'SLURM_NODEID') if env.get('SLURM_NODEID') else 0
    local_world_size = _slurm_tasks_on_node(env, node_rank)
    local_rank = _int_var(env, 'SLURM_LOCALID',
                          below=(local_world_size, 'the tasks on this node'))
    if env.get('MASTER_ADDR'):
        master_addr = env['MASTER_ADDR']
    else:
        list_name = next((name for name in ('SLURM_STEP_NODELIST', 'SLURM_JOB_NODELIST',
                                            'SLURM_NODELIST') if env.get(name)), None)
        if list_name is None:
            raise MisconfigurationException(
                "srun started this process, but none of SLURM_STEP_NODELIST, "
                "SLURM_JOB_NODELIST, SLURM_NODELIST is set, so the master host is unknown. "
                "Set MASTER_ADDR to the host of rank 0.")
        try:
            master_addr = parse_slurm_nodelist(env[list_name])[0]
        except ValueError as err:
            raise MisconfigurationException(
                f"{list_name}={env[list_name]!r} is not a Slurm node list: {err}. Set "
                f"MASTER_ADDR to the host of rank 0 to skip reading it.") from err
    if env.get('MASTER_PORT'):
        master_port = _port_var(env, 'MASTER_PORT')
    else:
        job_name = next((name for name in ('SLURM_JOB_ID', 'SLURM_JOBID') if env.get(name)),
                        None)
        if job_name is None:
            raise MisconfigurationException(
                "srun started this process, but neither MASTER_PORT nor SLURM_JOB_ID is set, "
                "so the ranks cannot agree on a port. Set MASTER_PORT.")
        master_port = slurm_master_port(_int_var(env, job_name))
    return ClusterEnvironment(
        rank=rank, local_rank=local_rank, world_size=world_size,
        local_world_size=local_world_size, node_rank=node_rank, master_addr=master_addr,
        master_port=master_port, source='slurm')


def _slurm_tasks_on_node(env, node_rank):
    """How many tasks of the step run on node ``node_rank``. The per-node lists
    (``'2(x3),1'``: two tasks on each of three nodes, then one) come first: they stay right
    when the tasks do not divide evenly over the nodes."""
    for name in ('SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE'):
        if env.get(name):
            counts = _parse_tasks_per_node(name, env[name])
            if node_rank >= len(counts):
                raise MisconfigurationException(
                    f"SLURM_NODEID={node_rank} but {name}={env[name]!r} lists only "
                    f"{len(counts)} node(s).")
            return counts[node_rank]
    if env.get('SLURM_NTASKS_PER_NODE'):
        return _int_var(env, 'SLURM_NTASKS_PER_NODE', minimum=1)
    raise MisconfigurationException(
        "srun started this process, but none of SLURM_STEP_TASKS_PER_NODE, "
        "SLURM_TASKS_PER_NODE, SLURM_NTASKS_PER_NODE is set, so the number of ranks on this "
        "node is unknown. Launch with srun --ntasks-per-node=N.")


def _parse_tasks_per_node(name, text):
    counts = []
    for item in text.split(','):
        match = re.fullmatch(r'\s*(\d+)\s*(?:\(x(\d+)\))?\s*', item)
        if match is None or int(match.group(1)) < 1:
            raise MisconfigurationException(
                f"{name}={text!r}: expected comma-separated task counts such as '2(x3),1' "
                f"(two tasks on each of three nodes, then one), got {item!r}.")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _int_var(env, name, minimum=0, below=None):
    """The integer in ``env[name]``, at least ``minimum`` and, with ``below=(limit, what)``,
    less than ``limit``."""
    text = env[name]
    try:
        value = int(text)
    except ValueError:
        raise MisconfigurationException(
            f"The environment variable {name}={text!r} is not an integer.") from None
    if value < minimum:
        raise MisconfigurationException(
            f"The environment variable {name}={text!r} must be at least {minimum}.")
    if below is not None and value >= below[0]:
        raise MisconfigurationException(
            f"The environment variable {name}={text!r} must be less than {below[1]} "
            f"({below[0]}).")
    return value


def _port_var(env, name):
    port = _int_var(env, name, minimum=1)
    if port > 65535:
        raise MisconfigurationException(
            f"The environment variable {name}={env[name]!r} is not a TCP port (1-65535).")
    return port


def slurm_master_port(job_id):
    """The rendezvous port of a SLURM job without ``MASTER_PORT``: derived from the job id, so
    every rank of the job computes the same one and two jobs sharing a node almost never pick
    the same port. Always between 10000 and 29999, below Linux's ephemeral ports."""
    return SLURM_PORT_BASE + int(job_id) % SLURM_PORT_SPAN


def parse_slurm_nodelist(text):
    """The host names of a Slurm node list, in order: ``'node[01-04,07]'`` gives
    ``['node01', 'node02', 'node03', 'node04', 'node07']``. Items are separated by commas
    (outside brackets); a name may hold several bracket groups (``'r[1-2]n[1-2]'`` expands to
    every combination, the last group varying fastest) and text after a group
    (``'n[001-002]-ib'``). A range keeps the zero padding of its first number. Raises
    ``ValueError`` for an empty list, unbalanced brackets, a reversed range or a non-number in
    brackets."""
    hosts = []
    for item in _split_outside_brackets(text.strip()):
        if not item:
            raise ValueError(f'empty host name in {text!r}')
        names = ['']
        for literal, group in re.findall(r'([^\[\]]*)(\[[^\[\]]*\])?', item):
            suffixes = [literal + value for value in _expand_group(group[1:-1], text)] \
                if group else [literal]
            names = [name + suffix for name in names for suffix in suffixes]
        hosts += names
    return hosts


def _split_outside_brackets(text):
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == '[':
            depth += 1
            if depth > 1:
                raise ValueError(f'nested "[" in {text!r}')
        elif char == ']':
            depth -= 1
            if depth < 0:
                raise ValueError(f'"]" without "[" in {text!r}')
        elif char == ',' and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    if depth:
        raise ValueError(f'"[" without "]" in {text!r}')
    items.append(text[start:].strip())
    return items


def _expand_group(group, text):
    values = []
    for part in group.split(','):
        match = re.fullmatch(r'\s*(\d+)\s*(?:-\s*(\d+)\s*)?', part)
        if match is None:
            raise ValueError(f'{part!r} in [{group}] of {text!r} is not a number or a range')
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise ValueError(f'reversed range {part!r} in {text!r}')
        values += [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]
    return values


def free_port():
    """A TCP port that is free on this machine right now (the system picks it). Another
    process may take it before the ranks bind it; that is rare, and the process group then
    fails to start with an "address in use" error."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('', 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# Starting the ranks ourselves

def spawn_ranks(fn, nprocs, timeout_s=None, master_port=None):
    """Run ``fn()`` in ``nprocs`` fresh interpreters (ranks ``0 .. nprocs - 1`` on this host)
    and return what rank 0's call returned.

    ``fn`` is any callable taking no arguments; it is pickled by value with ``cloudpickle``
    (a closure, a lambda, a class from ``__main__`` or a notebook all work). Each child gets
    ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK=0``,
    ``NODE_RANK=0``, ``MASTER_ADDR=127.0.0.1``, ``MASTER_PORT`` (``master_port``, else this
    process's ``MASTER_PORT``, else ``free_port()``) and ``PL_SPAWNED=1``, inherits the rest
    of the environment and this process's stdout and stderr.

    As soon as one rank fails, the others are stopped (SIGTERM, then SIGKILL after
    ``TERMINATE_GRACE_S``) and this call raises: the failing rank's own exception, rebuilt
    here, with its rank (``exc.rank``) and its traceback text attached (a note), or
    ``RankFailedError`` (an exit code, a signal, an exception that cannot be rebuilt, no
    result from rank 0). ``timeout_s`` (``None``: none) bounds the whole run; past it every rank
    is stopped and ``TimeoutError`` is raised. Ctrl-C (``KeyboardInterrupt``) is passed on to
    the children as SIGINT; they get ``INTERRUPT_GRACE_S`` to finish (a second Ctrl-C ends the
    wait), then the leftovers are killed and the interrupt is re-raised. SIGUSR1 (SLURM's
    preemption warning) is passed on to the children while this call runs (when it runs in the
    main thread), instead of ending this process. Each child runs in a process group (and
    session) of its own, so a terminal's Ctrl-C reaches it only through this process; every
    group is killed before this call returns or raises, so no process is left behind, helpers
    the ranks started included."""
    _check_spawn_arguments(nprocs, timeout_s, master_port)
    port = master_port or (_port_var(os.environ, 'MASTER_PORT') if os.environ.get('MASTER_PORT')
                           else free_port())
    try:
        import cloudpickle
        function = cloudpickle.dumps(fn)
    except Exception as err:
        raise MisconfigurationException(
            f"spawn_ranks could not pickle {fn!r} to send it to the ranks: "
            f"{type(err).__name__}: {err}. Everything the function refers to must pickle; "
            f"open files, locks, sockets and generators do not.") from err
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix='pl-spawn-') as workdir:
        with open(os.path.join(workdir, PAYLOAD_FILE), 'wb') as file:
            pickle.dump({'sys_path': list(sys.path), 'function': function}, file)
        ranks = _Ranks(workdir, nprocs, port)
        forwarding = _forward_signals(FORWARDED_SIGNALS, ranks)
        try:
            ranks.start()
            failed = ranks.watch(deadline, timeout_s)
        except KeyboardInterrupt:
            ranks.interrupt()
            raise
        finally:
            try:
                ranks.stop()
            finally:
                _restore_signals(forwarding)
        error = ranks.error(failed) if failed is not None else None
        if error is None:
            result = _read_result(workdir, nprocs)
    if error is not None:
        raise error
    return result


def _forward_signals(signums, ranks):
    """Pass ``signums`` on to the running ranks from now on; returns the handlers to restore
    (none outside the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in signums:
        previous[signum] = signal.signal(signum, lambda number, frame: ranks.send(number))
    return previous


def _restore_signals(previous):
    for signum, handler in previous.items():
        # None: a handler set outside Python, which cannot be put back; the default then
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _check_spawn_arguments(nprocs, timeout_s, master_port):
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise MisconfigurationException(
            f"spawn_ranks(nprocs={nprocs!r}): pass the number of processes, an int >= 1.")
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(
            timeout_s, (int, float)) or timeout_s <= 0):
        raise MisconfigurationException(
            f"spawn_ranks(timeout_s={timeout_s!r}): pass a number of seconds > 0, or None for "
            f"no limit.")
    if master_port is not None and (isinstance(master_port, bool) or not isinstance(
            master_port, int) or not 1 <= master_port <= 65535):
        raise MisconfigurationException(
            f"spawn_ranks(master_port={master_port!r}): pass a TCP port (1-65535), or None to "
            f"take MASTER_PORT from the environment or a free port.")


def _read_result(workdir, nprocs):
    path = os.path.join(workdir, RESULT_FILE)
    if not os.path.exists(path):
        raise RankFailedError(
            f"Rank 0 of {nprocs} exited with code 0 but handed back no result (did the function "
            f"call sys.exit(0)?).", rank=0, exitcode=0)
    with open(path, 'rb') as file:
        return pickle.load(file)


def _installed():
    """Whether this package lies in a site-packages folder, which every interpreter searches.
    (Putting such a folder on PYTHONPATH would rank it before the standard library.)"""
    sites = site.getsitepackages() + [site.getusersitepackages()]
    return os.path.realpath(_PACKAGE_ROOT) in {os.path.realpath(path) for path in sites}


def report_path(workdir, rank):
    """Where rank ``rank`` writes its exception report."""
    return os.path.join(workdir, f'error-{rank}.pkl')


class _Ranks:
    """The children of one ``spawn_ranks`` call: start them, watch them, stop them.

    A child's exit is read with ``waitid(WNOWAIT)``, which leaves it a zombie: its pid, and so
    the id of its process group, cannot be reused by another process until ``stop`` has killed
    the group and reaped the child."""

    def __init__(self, workdir, nprocs, port):
        self.workdir, self.nprocs, self.port = workdir, nprocs, port
        self.procs = []
        self.looked_at = None  # when watch last looked at the ranks (time.time())
        self.interrupted = False

    def start(self):
        self.looked_at = time.time()
        base = dict(os.environ)
        if not _installed():
            # a checkout found through sys.path (a notebook's sys.path.insert, a script run
            # from the checkout): the children must import this package before they can read
            # the payload, which brings the parent's whole sys.path
            path = base.get('PYTHONPATH')
            base['PYTHONPATH'] = _PACKAGE_ROOT + (os.pathsep + path if path else '')
        base.update(WORLD_SIZE=str(self.nprocs), LOCAL_WORLD_SIZE=str(self.nprocs),
                    GROUP_RANK='0', NODE_RANK='0', MASTER_ADDR='127.0.0.1',
                    MASTER_PORT=str(self.port), PL_SPAWNED='1')
        for rank in range(self.nprocs):
            env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
            self.procs.append(subprocess.Popen(
                [sys.executable, '-m', WORKER_MODULE, self.workdir, str(rank), str(os.getpid())],
                env=env, stdin=subprocess.DEVNULL, start_new_session=True))

    def exit_code(self, rank):
        """Rank ``rank``'s exit code (negative: the signal that killed it), or ``None`` while it
        runs. Does not reap it."""
        proc = self.procs[rank]
        if proc.returncode is not None:
            return proc.returncode
        if not hasattr(os, 'waitid'):  # no peeking here: reap (stop kills the group early)
            return proc.poll()
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None or info.si_pid == 0:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def watch(self, deadline, timeout_s):
        """Wait until every rank has exited 0 (returns ``None``) or one has failed (returns
        the rank that failed first). A rank has failed when it exits with another code, is
        killed, or writes an exception report (even if it is still shutting down)."""
        while True:
            failed = self._first_failure()
            if failed is not None:
                return self._settle(failed)
            if all(self.exit_code(rank) == 0 for rank in range(len(self.procs))):
                return None
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"spawn_ranks: the {self.nprocs} ranks did not finish within "
                    f"timeout_s={timeout_s} s; all were stopped.")
            time.sleep(POLL_S)

    def _first_failure(self):
        # A rank that exited without a report failed after the previous look and before this
        # one; it counts as failing at the previous look, so that when it takes the others
        # down with it (their collectives raise) within one interval, it is still named.
        previous, self.looked_at = self.looked_at, time.time()
        failures = []
        for rank in range(len(self.procs)):
            code = self.exit_code(rank)
            report = self._report(rank)
            if report is not None:
                failures.append((report['failed_at'], rank))
            elif code not in (None, 0):
                failures.append((previous, rank))
        return min(failures)[1] if failures else None

    def _settle(self, failed):
        """The rank to name, once ``failed`` was seen failing. A rank that dies without a
        report (an exit code, a signal) takes its peers down: their collectives raise as soon
        as its sockets close, which happens before the kernel lets its exit be seen, so a
        peer's report can come first. Such a death within ``FAILURE_SETTLE_S`` of the first
        failure is named instead; otherwise the earliest failure."""
        end = time.monotonic() + FAILURE_SETTLE_S
        while self._report(failed) is not None:
            died = [rank for rank in range(len(self.procs)) if self._report(rank) is None
                    and self.exit_code(rank) not in (None, 0)]
            if died:
                return died[0]
            if time.monotonic() > end:
                return self._first_failure()
            time.sleep(POLL_S)
        return failed

    def _report(self, rank):
        try:
            with open(report_path(self.workdir, rank), 'rb') as file:
                return pickle.load(file)
        except FileNotFoundError:
            return None

    def interrupt(self):
        """Ctrl-C: SIGINT to every running rank, then wait up to ``INTERRUPT_GRACE_S`` for them
        to exit (a second Ctrl-C stops the wait); ``stop`` then kills the rest at once."""
        self.interrupted = True
        self.send(signal.SIGINT)
        try:
            self._wait_exit(INTERRUPT_GRACE_S)
        except KeyboardInterrupt:
            pass  # the user insists: stop() kills them now

    def stop(self):
        """SIGTERM to the ranks still running (not after an interrupt: they had their
        chance), SIGKILL to every rank's process group after ``TERMINATE_GRACE_S``, then reap
        them all."""
        try:
            if not self.interrupted:
                self.send(signal.SIGTERM)
                self._wait_exit(TERMINATE_GRACE_S)
        finally:
            for proc in self.procs:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass  # the group is empty already
            for proc in self.procs:
                proc.wait(timeout=TERMINATE_GRACE_S)

    def send(self, signum):
        """Send ``signum`` to every started rank still running; returns their ranks."""
        # a rank that wrote its exception report is exiting by itself: no signal, so its
        # exit code stays its own
        running = [rank for rank in range(len(self.procs))
                   if self.exit_code(rank) is None and self._report(rank) is None]
        for rank in running:
            try:
                os.kill(self.procs[rank].pid, signum)
            except ProcessLookupError:
                pass
        return running

    def _wait_exit(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end and any(
                self.exit_code(rank) is None for rank in range(len(self.procs))):
            time.sleep(POLL_S)

    def error(self, rank):
        """The exception that reports rank ``rank``'s failure."""
        code = self.procs[rank].returncode
        report = self._report(rank)
        where = f"rank {rank} of {self.nprocs}"
        if report is None:
            if code is not None and code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = f'signal {-code}'
                return RankFailedError(f"{where.capitalize()} was killed by {name}.",
                                       rank=rank, exitcode=code)
            return RankFailedError(
                f"{where.capitalize()} exited with code {code} without raising a Python "
                f"exception (os._exit, or a crash in native code); the other ranks were "
                f"stopped.", rank=rank, exitcode=code)
        text = report['traceback']
        exc = _rebuild_chain(report['chain'])
        if exc is None:
            return RankFailedError(
                f"{where.capitalize()} raised {report['chain'][0]['type']}: "
                f"{report['chain'][0]['message']} (the exception cannot be rebuilt in this "
                f"process). Its traceback there:\n{text}",
                rank=rank, exitcode=code, child_traceback=text)
        try:
            exc.rank = rank
            exc.child_traceback = text
        except AttributeError:
            pass  # an exception type with __slots__: the note still says it
        return _with_note(exc, f"Raised on {where} (spawn_ranks). Its traceback there:\n{text}",
                          rank, code)


def _rebuild_chain(chain):
    """The exception of a report with its ``__cause__``/``__context__`` chain, as far as
    each link can be unpickled here; ``None`` if the exception itself cannot be."""
    rebuilt = []
    for link in chain:
        try:
            exc = pickle.loads(link['pickled']) if link['pickled'] is not None else None
        except Exception:
            exc = None
        if not isinstance(exc, BaseException):
            break
        rebuilt.append((exc, link))
    for (exc, link), (following, _) in zip(rebuilt, rebuilt[1:]):
        if link['next'] == 'cause':
            exc.__cause__ = following
        else:
            exc.__context__ = following
    return rebuilt[0][0] if rebuilt else None


def _with_note(exc, note, rank, code):
    if hasattr(exc, 'add_note'):  # Python 3.11+
        exc.add_note(note)
        return exc
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f'{exc.args[0]}\n\n{note}',) + exc.args[1:]
        return exc
    wrapper = RankFailedError(note, rank=rank, exitcode=code)
    wrapper.__cause__ = exc
    return wrapper

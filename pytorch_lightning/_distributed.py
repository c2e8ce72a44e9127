"""Distributed training: the part of the ``Trainer`` that joins a ``torch.distributed`` world,
or starts the processes of one and takes rank 0's result back. A mixin, so the loop in
``trainer.py`` stays short; it works on the trainer's own state (``self``) and never imports
``trainer.py``.

``fit`` with ``distributed_backend='ddp'``:

- when the environment already defines the ranks (torchrun, or ``srun`` with several tasks,
  see ``placement.launch.detect_environment``), this process joins that world and trains
  as its rank;
- otherwise ``fit`` starts ``num_processes`` (or one per GPU) fresh interpreters that run
  only the fit (``placement.launch.spawn_ranks``), each of which then joins as above; when
  they are done, this process's model gets rank 0's weights and this trainer rank 0's state
  (optimizers, callbacks, metrics), as after a one-process fit.
"""
import functools
import os
import pickle

import torch

from . import checkpoint_io
from . import validation as checks
from .exceptions import MisconfigurationException
from .utilities.transfer import move_to_device


class DistributedMixin:
    """The rank properties and the steps ``Trainer.fit`` takes for ``distributed_backend='ddp'``."""

    # -------------------------------------------------------------- who am I
    @property
    def global_rank(self):
        """This process's rank among all processes (0 without DDP)."""
        return self.world.rank

    proc_rank = global_rank  # the classic name

    @property
    def local_rank(self):
        """This process's rank on its machine (its GPU index into ``gpus`` under DDP)."""
        return self.world.local_rank

    @property
    def node_rank(self):
        """The machine's rank among the machines (0 without several nodes)."""
        return self.world.node_rank

    @property
    def world_size(self):
        """How many processes train together (1 without DDP)."""
        return self.world.world_size

    @property
    def is_global_zero(self):
        """Whether this is rank 0, the process that draws, logs and writes files."""
        return self.world.is_zero

    # -------------------------------------------------------------- fit
    def _processes_per_node(self):
        return self.device.processes_per_node or self.num_processes

    def _fit_elsewhere(self, model):
        """For ``distributed_backend='ddp'``: join the world the environment defines (and
        return ``False``: this process trains), or start the processes, run the fit in them
        and adopt rank 0's result (``True``: the fit is done)."""
        if self.world.world_size == 1:
            from .placement.launch import detect_environment
            env = detect_environment()
            if env is None:
                self._spawn_fit(model)
                return True
            self._join(env)
        self._share_run()
        return False

    def _join(self, env):
        per_node = self._processes_per_node()
        expected = per_node * self.nb_gpu_nodes
        made_of = (f"{per_node} process(es) per node ({self._per_node_arg()}) x "
                   f"nb_gpu_nodes={self.nb_gpu_nodes}")
        if env.world_size != expected:
            raise MisconfigurationException(
                f"{env.source} started {env.world_size} processes in all "
                f"({_VARIABLES[env.source][0]}={env.world_size}), "
                f"but the Trainer asks for {made_of} = {expected}. Start as many processes as "
                f"the Trainer asks for, or change its arguments to match.")
        if env.local_world_size is not None and env.local_world_size != per_node:
            raise MisconfigurationException(
                f"{env.source} started {env.local_world_size} processes on this node "
                f"({_VARIABLES[env.source][1]}={env.local_world_size}), but the Trainer asks "
                f"for {made_of}. Start "
                f"{per_node} per node (torchrun --nproc_per_node={per_node}, or "
                f"#SBATCH --ntasks-per-node={per_node}), or change gpus/num_processes.")
        from .placement.ddp import DistributedWorld
        backend = 'nccl' if self.device.node_gpu_ids else 'gloo'
        world = DistributedWorld(env, backend, self.process_group_timeout)
        self.device.join(env.local_rank)
        world.join(self.device)
        self.world = world
        self._flag_in_reads = False  # NaN flags are agreed at fixed points, never read alone

    def _per_node_arg(self):
        if self.device.node_gpu_ids:
            return f'gpus={self.device.node_gpu_ids}'
        return f'num_processes={self.num_processes}'

    def _share_run(self):
        """Rank 0 picks the log version (and only rank 0 writes logs); the others learn it,
        so every rank finds the same checkpoint folder."""
        logger = self.logger
        if logger is None:
            return
        logger.rank = self.world.rank
        version = self.world.broadcast_object(logger.version if self.world.is_zero else None)
        if not self.world.is_zero:
            logger.version = version

    def _spawn_fit(self, model):
        from .placement.launch import spawn_ranks
        checks.check_module(model)  # contract errors before any process starts
        if self.nb_gpu_nodes > 1:
            raise MisconfigurationException(
                f"Trainer(nb_gpu_nodes={self.nb_gpu_nodes}): fit starts the processes of this "
                f"machine only. Start one process per GPU on every node with torchrun "
                f"(--nnodes={self.nb_gpu_nodes}) or srun (see docs/distributed.md), or pass "
                f"nb_gpu_nodes=1.")
        job = _RankFit(type(self), self._init_args, model, checkpoint_io.capture_rng(),
                       torch.initial_seed())
        payload = _pickled(job, model)
        result = spawn_ranks(functools.partial(_run_pickled, payload), self._processes_per_node())
        if result.get('preempted'):  # the ranks wrote the HPC checkpoint and requeued the job
            raise SystemExit(0)
        self._adopt(model, result)

    def _rank_zero_result(self):
        """What rank 0 hands back to the process that started the fit: the run as a
        checkpoint dict (position: epoch complete), the last step's dicts and the log version,
        every tensor on the CPU."""
        return move_to_device({
            'checkpoint': checkpoint_io.dump(self, self._position()),
            'last': (self.last_loss, self.last_prog, self.last_log),
            'logger_version': None if self.logger is None else self.logger.version,
        }, torch.device('cpu'))

    def _adopt(self, model, result):
        """Make this process's trainer and ``model`` what rank 0 ended with."""
        self._setup_fit(model)
        self._hooks.call('on_fit_setup')
        checkpoint = result['checkpoint']
        checkpoint[checkpoint_io.KEY]['logger'] = None  # rank 0 closed it; the version follows
        checkpoint_io.restore(self, checkpoint, 'the result of rank 0')
        self._epoch_done = True
        self.last_loss, self.last_prog, self.last_log = result['last']
        if self.logger is not None and result['logger_version'] is not None:
            self.logger.version = result['logger_version']


class _RankFit:
    """The fit one spawned process runs: a trainer built from the same arguments, the
    launching process's random state (so a seed set before ``fit`` holds in every rank), then
    ``fit``; rank 0 returns its result. Unless ``OMP_NUM_THREADS`` is set, each rank uses
    the machine's cores divided by the ranks on it as torch threads."""

    def __init__(self, trainer_class, args, model, rng, seed):
        self.trainer_class, self.args, self.model = trainer_class, args, model
        self.rng, self.seed = rng, seed

    def __call__(self):
        if 'OMP_NUM_THREADS' not in os.environ:  # share the cores, as torchrun does
            per_node = int(os.environ.get('LOCAL_WORLD_SIZE', '1'))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
        torch.manual_seed(self.seed)  # torch.initial_seed() as in the launching process
        checkpoint_io.restore_rng(self.rng)
        trainer = self.trainer_class(**self.args)
        try:
            trainer.fit(self.model)
            result = trainer._rank_zero_result() if trainer.is_global_zero else None
        except SystemExit as stop:  # a SLURM preemption: saved and requeued by the ranks
            if stop.code not in (0, None):
                raise
            result = {'preempted': True} if trainer.is_global_zero else None
        trainer.world.close()  # every rank tears the group down together, before exiting
        return result


def _pickled(job, model):
    import cloudpickle
    try:
        return cloudpickle.dumps(job)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise MisconfigurationException(
            f"distributed_backend='ddp' sends the model and the Trainer's arguments to new "
            f"processes, but they cannot be pickled: {type(err).__name__}: {err}. Keep "
            f"unpicklable objects (open files, locks, generators, lambdas holding them) out "
            f"of {type(model).__name__}'s attributes and the Trainer's arguments, or create "
            f"them lazily (e.g. in the dataloader methods).") from err


def _run_pickled(payload):
    import cloudpickle
    return cloudpickle.loads(payload)()


#: for each launcher, the variables that gave the world size and the processes per node
_VARIABLES = {'torchrun': ('WORLD_SIZE', 'LOCAL_WORLD_SIZE'),
              'spawn': ('WORLD_SIZE', 'LOCAL_WORLD_SIZE'),
              'slurm': ('SLURM_NTASKS', 'SLURM_NTASKS_PER_NODE')}

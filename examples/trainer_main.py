"""The seed's launcher: one ``main`` for every model, each model adds its own arguments, and
one command runs a whole hyperparameter sweep.

    # one run
    python examples/trainer_main.py --model_name digits --max_nb_epochs 5
    python examples/trainer_main.py --model_name seed_example --out_features 20 -h

    # a sweep: 8 random trials of the digits model's tunable arguments, 2 at a time
    python examples/trainer_main.py --model_name digits --search random --nb_trials 8 --workers 2
    python examples/trainer_main.py --model_name digits --search grid --gpus 0,1   # 1 GPU each
    python examples/trainer_main.py --model_name digits --search grid --resume     # after Ctrl-C
    python examples/trainer_main.py --model_name digits --search grid --cluster slurm \\
        --slurm_partition gpu --slurm_gpus 1 --slurm_time 01:00:00

To add a model: write it in its own file and register it in ``AVAILABLE_MODELS``. Logs go to
``<save_path>/<exp_name>/version_<n>/`` (metrics.csv, meta_tags.csv, checkpoints/); a sweep's
trial ``i`` is ``version_i``, and its table is ``<save_path>/<exp_name>/trials.csv``.
See docs/sweeps.md and docs/tutorial.md.
"""
import inspect
import os
import sys

import torch
from test_tube import HyperOptArgumentParser

EXAMPLES_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, EXAMPLES_DIR)  # so the sibling example files import as plain modules
# in a source checkout, the checkout's package (this launcher and a sweep's trials run the
# same code, even when another copy of pytorch_lightning is pip-installed)
if os.path.isdir(os.path.join(os.path.dirname(EXAMPLES_DIR), 'pytorch_lightning')):
    sys.path.insert(0, os.path.dirname(EXAMPLES_DIR))

from pytorch_lightning import Trainer, sweep  # noqa: E402
from pytorch_lightning.loggers import TestTubeLogger  # noqa: E402

from digits_search import DigitsSearchModel  # noqa: E402
from seed_example import ExampleModel  # noqa: E402

AVAILABLE_MODELS = {
    'seed_example': ExampleModel,
    'digits': DigitsSearchModel,
}


def build_parser(models=None):
    # arguments every model shares; add_help=False so -h lists the model's arguments too
    models = AVAILABLE_MODELS if models is None else models
    parser = HyperOptArgumentParser(strategy='grid_search', add_help=False)
    parser.add_argument('--model_name', default='digits', choices=sorted(models))
    parser.add_argument('--exp_name', default=None, help='experiment name (default: model_name)')
    parser.add_argument('--save_path', default=os.getcwd(), help='parent of the experiment folder')
    parser.add_argument('--version', default=None, type=int,
                        help='log version (default: the next free one; a sweep sets it per trial)')
    parser.add_argument('--learning_rate', default=0.01, type=float)
    parser.add_argument('--optimizer_name', default='adam')
    parser.add_argument('--max_nb_epochs', default=10, type=int)
    parser.add_argument('--train_percent_check', default=1.0, type=float)
    parser.add_argument('--val_percent_check', default=1.0, type=float)
    parser.add_argument('--gpus', default=None,
                        help='one run: the Trainer\'s gpus; a sweep: the GPUs its trials share')
    parser.add_argument('--distributed_backend', default=None,
                        help="the Trainer's distributed_backend (e.g. for several srun tasks)")
    parser.add_argument('--seed', default=0, type=int)
    return sweep.add_sweep_args(parser)


def build_model(model_cls, hparams):
    # classic models take hparams in __init__; the seed's ExampleModel takes no arguments
    takes_hparams = len(inspect.signature(model_cls.__init__).parameters) > 1
    model = model_cls(hparams) if takes_hparams else model_cls()
    model.hparams = hparams
    return model


def main(argv=None, models=None, script=None):
    """One run, or the sweep the sweep flags ask for. ``models``: the registry (default
    ``AVAILABLE_MODELS``); ``script``: the file each trial of a sweep runs (default: this one;
    a script that registers its own models and calls ``main`` passes its own path)."""
    models = AVAILABLE_MODELS if models is None else models
    # 1. find out which model was asked for, 2. let that model add its own arguments
    parent = build_parser(models)
    known, _ = parent.parse_known_args(argv)
    model_cls = models[known.model_name]
    parser = model_cls.add_model_specific_args(parent)
    hparams = parser.parse_args(argv)
    name = hparams.exp_name or hparams.model_name

    if sweep.is_sweep(hparams):
        result = sweep.run_sweep(parser, hparams, script=script or os.path.abspath(__file__),
                                 exp_dir=os.path.join(hparams.save_path, name))
        return {'sweep': result, 'exit_code': result.exit_code}

    # one run (or one trial of a sweep): logged into <save_path>/<name>/version_<version>,
    # tagged with every hyperparameter but the sweep's own flags (meta_tags.csv)
    hparams = sweep.trial_hparams(hparams)
    logger = TestTubeLogger(save_dir=hparams.save_path, name=name, version=hparams.version)
    torch.manual_seed(hparams.seed)
    model = build_model(model_cls, hparams)
    trainer = Trainer(logger=logger, max_nb_epochs=hparams.max_nb_epochs, gpus=hparams.gpus,
                      distributed_backend=hparams.distributed_backend,
                      train_percent_check=hparams.train_percent_check,
                      val_percent_check=hparams.val_percent_check)
    trainer.fit(model)

    metrics = {k: v.item() if hasattr(v, 'item') else v
               for k, v in trainer.callback_metrics.items()}
    print(f'{hparams.model_name}: {metrics}')
    print(f'logs: {logger.log_dir}')
    return {'trainer': trainer, 'logger': logger, 'log_dir': logger.log_dir, 'exit_code': 0}


if __name__ == '__main__':
    sys.exit(main()['exit_code'])

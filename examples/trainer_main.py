"""The seed's launcher: one ``main`` for every model; each model adds its own arguments.

    python examples/trainer_main.py --model_name digits --max_nb_epochs 5
    python examples/trainer_main.py --model_name seed_example --out_features 20 -h

To add a model: write it in its own file and register it in ``AVAILABLE_MODELS``.
Logs go to ``<save_path>/<exp_name>/version_<n>/`` (metrics.csv, meta_tags.csv, tf/).
"""
import inspect
import os
import sys

import torch
from test_tube import Experiment, HyperOptArgumentParser

EXAMPLES_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, EXAMPLES_DIR)  # so the sibling example files import as plain modules

try:
    from pytorch_lightning import Trainer
except ImportError:  # running from a source checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(EXAMPLES_DIR))
    from pytorch_lightning import Trainer

from digits import DigitsModel  # noqa: E402
from seed_example import ExampleModel  # noqa: E402

AVAILABLE_MODELS = {
    'seed_example': ExampleModel,
    'digits': DigitsModel,
}


def build_parser():
    # arguments every model shares; add_help=False so -h lists the model's arguments too
    parser = HyperOptArgumentParser(strategy='grid_search', add_help=False)
    parser.add_argument('--model_name', default='digits', choices=sorted(AVAILABLE_MODELS))
    parser.add_argument('--exp_name', default=None, help='experiment name (default: model_name)')
    parser.add_argument('--save_path', default=os.getcwd(), help='parent of the experiment folder')
    parser.add_argument('--learning_rate', default=0.01, type=float)
    parser.add_argument('--optimizer_name', default='adam')
    parser.add_argument('--max_nb_epochs', default=10, type=int)
    parser.add_argument('--seed', default=0, type=int)
    return parser


def build_model(model_cls, hparams):
    # classic models take hparams in __init__; the seed's ExampleModel takes no arguments
    takes_hparams = len(inspect.signature(model_cls.__init__).parameters) > 1
    model = model_cls(hparams) if takes_hparams else model_cls()
    model.hparams = hparams
    return model


def main(argv=None):
    # 1. find out which model was asked for, 2. let that model add its own arguments
    parent = build_parser()
    known, _ = parent.parse_known_args(argv)
    model_cls = AVAILABLE_MODELS[known.model_name]
    hparams = model_cls.add_model_specific_args(parent).parse_args(argv)

    # a test-tube experiment, tagged with every hyperparameter (meta_tags.csv)
    exp = Experiment(save_dir=hparams.save_path, name=hparams.exp_name or hparams.model_name)
    exp.argparse(hparams)

    torch.manual_seed(hparams.seed)
    model = build_model(model_cls, hparams)
    trainer = Trainer(experiment=exp, max_nb_epochs=hparams.max_nb_epochs)
    trainer.fit(model)

    log_dir = exp.get_data_path(exp.name, exp.version)
    metrics = {k: v.item() if hasattr(v, 'item') else v
               for k, v in trainer.callback_metrics.items()}
    print(f'{hparams.model_name}: {metrics}')
    print(f'logs: {log_dir}')
    return {'trainer': trainer, 'experiment': exp, 'log_dir': log_dir}


if __name__ == '__main__':
    main()

"""The digits MLP of ``digits.py`` with a search space: which arguments a sweep tunes.

    python examples/trainer_main.py --model_name digits --search random --nb_trials 8 --workers 2

``opt_list`` sweeps a list of values, ``opt_range`` a range (here on a log scale; test-tube
draws ``nb_samples`` values from it when the parser is built). Only arguments with
``tunable=True`` are swept; the others keep the value on the command line (or the default).
"""
import os
import sys

from test_tube import HyperOptArgumentParser

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits import DigitsModel  # noqa: E402


class DigitsSearchModel(DigitsModel):
    """``DigitsModel`` unchanged; only its arguments are tunable."""

    @staticmethod
    def add_model_specific_args(parent_parser):
        # conflict_handler='resolve': this model redefines the launcher's --learning_rate as
        # a tunable range (with its own default)
        parser = HyperOptArgumentParser(strategy=parent_parser.strategy, parents=[parent_parser],
                                        conflict_handler='resolve')
        parser.opt_list('--hidden_dim', default=128, type=int, options=[32, 64, 128],
                        tunable=True)
        parser.opt_list('--drop_prob', default=0.2, type=float, options=[0.0, 0.2],
                        tunable=True)
        parser.opt_range('--learning_rate', default=0.003, type=float, low=1e-4, high=3e-2,
                         nb_samples=4, log_base=10, tunable=True)
        parser.add_argument('--batch_size', default=32, type=int)
        return parser

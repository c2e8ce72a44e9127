"""Bug hunt in experiment logging: what researchers do with loggers, rows and metric types."""
import os

import numpy as np
import pytest
import torch

from pytorch_lightning import Trainer
from pytorch_lightning.loggers import LightningLoggerBase
from pytorch_lightning.loggers.test_tube import read_metrics_csv

from models import TinyModel


def kwargs(tmp_path, **overrides):
    base = dict(default_save_path=str(tmp_path), progress_bar=False,
                print_weights_summary=False, max_nb_epochs=1, nb_sanity_val_steps=0,
                add_log_row_interval=3)
    base.update(overrides)
    return base


class Minimal(LightningLoggerBase):
    """Only the two required methods: no name, no version, no save, no finalize."""

    def __init__(self):
        self.rows = []

    def log_hyperparams(self, params):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((dict(metrics), step))


def test_a_minimal_logger_without_name_or_version_gets_no_none_folders(tmp_path):
    logger = Minimal()
    trainer = Trainer(**kwargs(tmp_path, logger=logger))
    trainer.fit(TinyModel())
    trainer.test()
    assert trainer.default_checkpoint_dir() == os.path.join(str(tmp_path), 'checkpoints')
    assert os.path.exists(os.path.join(str(tmp_path), 'checkpoints', 'last.ckpt'))
    assert not any('None' in name for name in os.listdir(tmp_path))
    # 8 batches: rows at 3 and 6, one validation row, one test row
    assert [step for _, step in logger.rows] == [3, 6, 8, 8]


def test_a_debug_experiment_passed_in_writes_nothing_and_fit_finishes(tmp_path, capsys):
    """docs/logging.md: "An experiment with debug=True writes nothing." test-tube gives such an
    experiment no version; the logger used to open a second Experiment beside it (printing
    a bogus "resuming" message) and crash closing it at the end of fit."""
    from test_tube import Experiment
    exp = Experiment(save_dir=str(tmp_path), name='dbg', debug=True)
    trainer = Trainer(**kwargs(tmp_path, experiment=exp))
    model = TinyModel()
    trainer.fit(model)
    trainer.test(model)
    assert 'resuming' not in capsys.readouterr().out
    assert not trainer.logger.is_open
    written = [os.path.join(root, name) for root, _, names in os.walk(tmp_path / 'dbg')
               for name in names]
    assert all('checkpoints' in path for path in written)  # no metrics, tags or TensorBoard
    assert any(path.endswith('last.ckpt') for path in written)


def test_the_documented_save_share_is_the_one_in_the_code():
    """logging.md and performance.md state the share of time saves may take (SAVE_SHARE)."""
    import re
    from pytorch_lightning.loggers import test_tube as tt
    docs = os.path.join(os.path.dirname(__file__), os.pardir, 'docs')
    for page in ('logging.md', 'performance.md'):
        with open(os.path.join(docs, page)) as f:
            text = ' '.join(f.read().split())
        stated = re.findall(r'at most (\d+(?:\.\d+)?) % of the time \(`SAVE_SHARE`', text)
        assert stated and all(float(p) / 100 == tt.SAVE_SHARE for p in stated), page
    with open(os.path.join(docs, 'logging.md')) as f:
        text = ' '.join(f.read().split())
    seconds, every = map(float, re.search(
        r'a (\d+(?:\.\d+)?) s rewrite runs every (\d+) s', text).groups())
    assert seconds / tt.SAVE_SHARE == pytest.approx(every)

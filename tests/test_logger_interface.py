"""The logger interface (LightningLoggerBase, rank_zero_only, Trainer(logger=...)) and the
test-tube logger's side of it: synchronous save, hyperparameters more than once, run status,
pickling."""
import argparse
import importlib.util
import json
import os
import pickle

import pytest

from pytorch_lightning import MisconfigurationException, Trainer
from pytorch_lightning.loggers import LightningLoggerBase, TestTubeLogger, rank_zero_only
from pytorch_lightning.loggers.test_tube import STATUS_FILE

from models import TinyModel
from test_logging import read_rows


class Recording(LightningLoggerBase):
    name, version = 'rec', 7

    def __init__(self):
        self.calls = []

    @rank_zero_only
    def log_hyperparams(self, params):
        self.calls.append(('hparams', params))

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        self.calls.append(('metrics', dict(metrics), step))

    def save(self):
        self.calls.append(('save',))

    def finalize(self, status):
        self.calls.append(('finalize', status))


def kwargs(tmp_path, **overrides):
    base = dict(default_save_path=str(tmp_path), progress_bar=False, print_weights_summary=False,
                max_nb_epochs=1, nb_sanity_val_steps=0)
    base.update(overrides)
    return base


def test_any_logger_receives_hparams_rows_and_the_status(tmp_path):
    logger = Recording()
    model = TinyModel(hparams=argparse.Namespace(lr=0.05))
    trainer = Trainer(**kwargs(tmp_path, logger=logger, add_log_row_interval=4))
    trainer.fit(model)
    assert logger.calls[0] == ('hparams', model.hparams)
    rows = [c for c in logger.calls if c[0] == 'metrics']
    assert [step for _, _, step in rows] == [4, 8, 8]  # two training rows, one validation row
    assert logger.calls[-1] == ('finalize', 'finished')
    # the default checkpoint folder follows the logger's name and version
    assert os.path.exists(tmp_path / 'rec' / 'version_7' / 'checkpoints' / 'last.ckpt')


@pytest.mark.parametrize('error, status', [(RuntimeError('boom'), 'failed'),
                                           (KeyboardInterrupt(), 'interrupted')])
def test_a_failed_or_interrupted_fit_tells_the_logger(tmp_path, error, status):
    class Fails(TinyModel):
        def training_step(self, data_batch, batch_nb):
            if batch_nb == 3:
                raise error
            return super().training_step(data_batch, batch_nb)

    logger = Recording()
    with pytest.raises(type(error)):
        Trainer(**kwargs(tmp_path, logger=logger)).fit(Fails())
    assert logger.calls[-1] == ('finalize', status)


def test_rank_zero_only_skips_other_ranks(tmp_path):
    logger = Recording()
    logger.rank = 1
    Trainer(**kwargs(tmp_path, logger=logger)).fit(TinyModel())
    assert not [c for c in logger.calls if c[0] in ('hparams', 'metrics')]


def test_logger_and_experiment_together_or_a_non_logger_are_refused():
    with pytest.raises(MisconfigurationException, match='pass one of them'):
        Trainer(logger=Recording(), experiment=False)
    with pytest.raises(MisconfigurationException, match="needs the methods.*log_metrics"):
        Trainer(logger=object())


def test_test_tube_save_has_saved_when_it_returns(tmp_path):
    logger = TestTubeLogger(save_dir=str(tmp_path), name='s', version=0)
    logger.log_metrics({'loss': 1.0}, 0)
    logger.save()  # the writer thread would save only a second after opening
    assert len(read_rows(tmp_path / 's' / 'version_0')) == 1
    logger.finalize()


def test_hyperparams_may_be_logged_more_than_once(tmp_path):
    logger = TestTubeLogger(save_dir=str(tmp_path), name='h', version=0)
    logger.log_hyperparams({'hidden': 8})
    logger.log_hyperparams(argparse.Namespace(lr=0.5, hidden=16))
    logger.finalize()
    with open(tmp_path / 'h' / 'version_0' / 'hparams.json') as f:
        typed = json.load(f)
    assert typed == {'container': 'dict', 'values': {'hidden': 16, 'lr': 0.5}}


def test_run_status_is_recorded(tmp_path):
    def status():
        with open(tmp_path / 'lightning_logs' / 'version_0' / STATUS_FILE) as f:
            return json.load(f)['status']

    seen = []

    class Peeks(TinyModel):
        def on_epoch_start(self):
            seen.append(status())

    Trainer(**kwargs(tmp_path)).fit(Peeks())
    assert seen == ['running'] and status() == 'finished'


def test_a_logger_that_has_logged_pickles_and_reopens_its_version(tmp_path):
    logger = TestTubeLogger(save_dir=str(tmp_path), name='p')
    logger.log_metrics({'loss': 1.0}, 0)  # open, with its writer thread
    copy = pickle.loads(pickle.dumps(logger))
    logger.finalize()
    assert copy.version == logger.version and not copy.is_open
    copy.log_metrics({'loss': 2.0}, 1)
    copy.finalize()
    assert [float(r['loss']) for r in read_rows(tmp_path / 'p' / f'version_{logger.version}')] \
        == [1.0, 2.0]


def test_test_with_a_custom_logger(tmp_path):
    logger = Recording()
    trainer = Trainer(**kwargs(tmp_path, logger=logger))
    trainer.fit(TinyModel())
    trainer.test()
    assert logger.calls[-1] == ('finalize', None) and logger.calls[-2][0] == 'save'


def test_a_custom_logger_needs_no_test_tube(tmp_path, monkeypatch):
    """Only the test-tube logger needs test-tube (a GPU image may not have it)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *args: None if name == 'test_tube' else real(name, *args))
    logger = Recording()
    Trainer(**kwargs(tmp_path, logger=logger)).fit(TinyModel())
    assert logger.calls[-1] == ('finalize', 'finished')
    with pytest.raises(MisconfigurationException, match='test-tube, which is not installed'):
        Trainer(**kwargs(tmp_path)).fit(TinyModel())

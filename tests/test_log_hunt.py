"""Bug hunt in experiment logging: what researchers do with loggers, rows and metric types."""
import os

import numpy as np
import pytest
import torch

from pytorch_lightning import Trainer
from pytorch_lightning.loggers import LightningLoggerBase
from pytorch_lightning.loggers.test_tube import read_metrics_csv

from models import TinyModel

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:  # tensorboard comes with test-tube; without it that test is skipped
    EventAccumulator = None


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


class EveryType(TinyModel):
    """Every kind of value a researcher puts in a log dict or returns from validation_end."""

    def training_step(self, data_batch, batch_nb):
        loss, _ = super().training_step(data_batch, batch_nb)
        return loss, {
            'py_int': 3, 'py_float': 1.5, 'py_bool': True, 'np_float': np.float32(2.5),
            'np_int': np.int64(4), 't_int': torch.tensor(5), 't_float': torch.tensor(1.25),
            't_bool': torch.tensor(True), 't_half': torch.tensor(0.5, dtype=torch.half),
            't_grad': loss * 2, 'a/b': 1.0, 'with space': 2.0, 'text': 'abc',
            'vector': torch.ones(3)}

    def validation_end(self, outputs):
        return {'val_loss': torch.tensor(0.75), 'val/np': np.float64(0.125),
                'val_int': torch.tensor(7), 'val_text': 'x'}


@pytest.mark.skipif(EventAccumulator is None, reason='tensorboard is not installed')
def test_every_value_type_lands_as_a_number_in_the_csv_and_tensorboard_at_its_step(tmp_path):
    """Numbers of every type become numbers; bools, strings and vectors are dropped (docs:
    only scalar numbers are written); '/' and spaces in keys survive; TensorBoard's steps
    are the CSV's step column, and step/global_step/created_at are CSV only."""
    trainer = Trainer(**kwargs(tmp_path, max_nb_epochs=2))
    model = EveryType()
    trainer.fit(model)
    trainer.test(model)
    folder = trainer.logger.log_dir
    rows = read_metrics_csv(os.path.join(folder, 'metrics.csv'))
    train = [r for r in rows if 'loss' in r]
    assert [r['step'] for r in train] == [3, 6, 9, 12, 15]
    for row in train:
        assert {k: row[k] for k in ('py_int', 'py_float', 'np_float', 'np_int', 't_int',
                                    't_float', 't_half', 'a/b', 'with space')} == {
            'py_int': 3, 'py_float': 1.5, 'np_float': 2.5, 'np_int': 4, 't_int': 5,
            't_float': 1.25, 't_half': 0.5, 'a/b': 1.0, 'with space': 2.0}
        assert row['t_grad'] == pytest.approx(2 * row['loss'])
    dropped = {'py_bool', 't_bool', 'text', 'vector', 'val_text'}
    assert not dropped & set().union(*rows)
    val = [r for r in rows if 'val_loss' in r]
    assert [(r['step'], r['val/np'], r['val_int']) for r in val] == [(8, 0.125, 7), (16, 0.125, 7)]
    assert rows[-1]['test_acc'] >= 0 and rows[-1]['step'] == 16

    steps = {}  # every event file of the version (test() after fit opens a second one)
    for name in sorted(os.listdir(os.path.join(folder, 'tf'))):
        events = EventAccumulator(os.path.join(folder, 'tf', name))
        events.Reload()
        for tag in events.Tags()['scalars']:
            steps.setdefault(tag, []).extend(e.step for e in events.Scalars(tag))
    assert not {'step', 'global_step', 'created_at'} & set(steps) and not dropped & set(steps)
    for key in set().union(*rows) - {'step', 'global_step', 'created_at'}:
        assert steps[key] == [r['step'] for r in rows if key in r], key


def test_a_logger_whose_log_metrics_raises_stops_fit_with_that_error(tmp_path):
    """The logger's own error reaches the caller unchanged (not swallowed, not wrapped) at the
    first row, and the logger is finalized as failed; the rows before it were delivered."""
    class Refuses(Minimal):
        def __init__(self):
            super().__init__()
            self.statuses = []

        def log_metrics(self, metrics, step=None):
            if step == 6:
                raise ValueError('the metrics server refused the row')
            super().log_metrics(metrics, step)

        def finalize(self, status):
            self.statuses.append(status)

    logger = Refuses()
    trainer = Trainer(**kwargs(tmp_path, logger=logger))
    with pytest.raises(ValueError, match='refused the row'):
        trainer.fit(TinyModel())
    assert [step for _, step in logger.rows] == [3] and logger.statuses == ['failed']


def test_a_run_resumed_with_a_debug_experiment_trains_on(tmp_path):
    """Resuming reopens a user's Experiment's TensorBoard file; a debug one has none."""
    from test_tube import Experiment
    trainer = Trainer(**kwargs(tmp_path, experiment=Experiment(
        save_dir=str(tmp_path), name='dbg', debug=True)))
    trainer.fit(TinyModel())
    last = os.path.join(trainer.default_checkpoint_dir(), 'last.ckpt')
    resumed = Trainer(**kwargs(tmp_path, max_nb_epochs=2, resume_from_checkpoint=last,
                               experiment=Experiment(save_dir=str(tmp_path), name='dbg',
                                                     debug=True)))
    resumed.fit(TinyModel())
    assert resumed.state.epoch == 1 and resumed.state.total_batches == 16
    written = [name for _, _, names in os.walk(tmp_path / 'dbg') for name in names]
    assert not {'metrics.csv', 'meta_tags.csv', 'meta.experiment'} & set(written)

"""pytorch_lightning.notebook on the logs of real (tiny) fits."""
import argparse
import csv
import math
import os
import shutil
import sys

import pytest
import torch

from models import TinyModel
from pytorch_lightning import Trainer, notebook
from pytorch_lightning.exceptions import MisconfigurationException

LRS = (0.05, 0.01)


class FailingModel(TinyModel):
    """Raises in the second epoch, so its run ends with status 'failed'."""

    def training_step(self, data_batch, batch_nb):
        if self.trainer.state.epoch == 1:
            raise RuntimeError('deliberate failure')
        return super().training_step(data_batch, batch_nb)


def fit(save_path, model):
    trainer = Trainer(default_save_path=str(save_path), progress_bar=False,
                      print_weights_summary=False, max_nb_epochs=3)
    model.trainer = trainer
    trainer.fit(model)


@pytest.fixture(scope='module')
def logs(tmp_path_factory):
    """version_0 and version_1: finished fits with lr 0.05 and 0.01; version_2: failed."""
    save_path = tmp_path_factory.mktemp('notebook')
    for lr in LRS:
        fit(save_path, TinyModel(argparse.Namespace(lr=lr, batch_size=8), lr=lr))
    with pytest.raises(RuntimeError, match='deliberate'):
        fit(save_path, FailingModel(argparse.Namespace(lr=0.02, batch_size=8), lr=0.02))
    return save_path


def version_dir(save_path, version):
    return os.path.join(str(save_path), 'lightning_logs', f'version_{version}')


def raw_columns(log_dir):
    """Each column of metrics.csv as the list of its non-empty cells, as floats."""
    with open(os.path.join(log_dir, 'metrics.csv'), newline='') as f:
        rows = list(csv.DictReader(f))
    columns = {}
    for row in rows:
        for key, value in row.items():
            if value != '' and key != 'created_at':
                columns.setdefault(key, []).append(float(value))
    return columns


def test_runs_one_row_per_version_with_hparams_status_and_metrics(logs):
    table = notebook.runs(logs)
    assert list(table['version']) == [0, 1, 2]
    assert list(table['lr']) == [0.05, 0.01, 0.02]
    assert list(table['batch_size']) == [8, 8, 8]
    assert list(table['status']) == ['finished', 'finished', 'failed']
    for _, row in table.iterrows():
        assert row['log_dir'] == version_dir(logs, row['version'])
        raw = raw_columns(row['log_dir'])
        assert row['epochs'] == max(raw['epoch']) + 1
        assert row['steps'] == max(raw['step'])
        metric_names = set(raw) - {'epoch', 'step', 'global_step'}
        assert 'val_loss' in metric_names
        for name in metric_names:
            assert row[f'{name}_last'] == pytest.approx(raw[name][-1])
        assert row['val_loss_best'] == pytest.approx(min(raw['val_loss']))
        assert row['val_acc_best'] == pytest.approx(max(raw['val_acc']))
        folder = os.path.join(row['log_dir'], 'checkpoints')
        assert row['checkpoints'] == sorted(os.path.join(folder, n) for n in os.listdir(folder))
        assert row['best_checkpoint'] in row['checkpoints']
        assert not row['best_checkpoint'].endswith('last.ckpt')
    finished = table[table['status'] == 'finished']
    assert list(finished['epochs']) == [3, 3]
    assert table['epochs'][2] == 1  # failed on the first batch of epoch 1: nothing logged there


def test_runs_of_a_missing_experiment_is_empty(tmp_path):
    assert len(notebook.runs(tmp_path, name='nothing_here')) == 0


def test_runs_reads_a_run_still_being_written(logs, tmp_path):
    """A copy of version_0 whose metrics.csv ends in a half-written line, with a malformed
    row before it, is read as if those lines were not there."""
    copy_root = tmp_path / 'lightning_logs'
    shutil.copytree(version_dir(logs, 0), copy_root / 'version_0')
    path = copy_root / 'version_0' / 'metrics.csv'
    with open(path, newline='') as f:
        header = next(csv.reader(f))
    with open(path, 'a') as f:
        f.write('1,2,3\n')  # too few fields
        # all fields present but no newline yet: the writer is in the middle of this line
        f.write(','.join(['99'] * len(header)))
    original = notebook.runs(logs).iloc[0]
    live = notebook.runs(tmp_path).iloc[0]
    for column in ('epochs', 'steps', 'val_loss_last', 'val_loss_best', 'train_loss_last'):
        assert live[column] == original[column], column
    frame = notebook.metrics(copy_root / 'version_0')
    assert len(frame) == len(notebook.metrics(version_dir(logs, 0)))
    assert frame['step'].max() == original['steps']


def test_metrics_has_typed_columns(logs):
    log_dir = version_dir(logs, 0)
    frame = notebook.metrics(log_dir)
    raw = raw_columns(log_dir)
    assert str(frame['epoch'].dtype) == 'int64'
    assert str(frame['step'].dtype) == 'int64'
    assert frame['val_loss'].dtype == 'float64'
    assert str(frame['created_at'].dtype).startswith('datetime64')
    assert list(frame['val_loss'].dropna()) == pytest.approx(raw['val_loss'])
    assert list(frame['step']) == [int(s) for s in raw['step']]


def test_metrics_int_column_with_gaps_and_strings(tmp_path):
    (tmp_path / 'metrics.csv').write_text('step,count,tag,loss\n1,3,a,0.5\n2,,b,\n3,4,c,1\n')
    frame = notebook.metrics(tmp_path)
    assert str(frame['count'].dtype) == 'Int64'
    assert list(frame['count'].dropna()) == [3, 4]
    assert list(frame['tag']) == ['a', 'b', 'c']
    assert frame['loss'].dtype == 'float64'
    assert math.isnan(frame['loss'][1])


def test_plot_writes_a_png_labelled_by_the_differing_hparams(logs, tmp_path):
    image = pytest.importorskip('matplotlib.image')
    table = notebook.runs(logs)
    target = tmp_path / 'curves.png'
    figure = notebook.plot(table.iloc[:2], metrics=('val_loss', 'val_acc'), path=target)
    assert target.stat().st_size > 0
    pixels = image.imread(str(target))
    assert pixels.ndim == 3 and len(set(map(tuple, pixels.reshape(-1, pixels.shape[-1])))) > 10
    assert len(figure.axes) == 2
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ['version_0: lr=0.05', 'version_1: lr=0.01']  # batch_size is the same
    line = figure.axes[0].get_lines()[0]
    raw = raw_columns(version_dir(logs, 0))
    assert list(line.get_ydata()) == pytest.approx(raw['val_loss'])


def test_plot_against_epoch_draws_the_last_value_of_each_epoch(tmp_path):
    pytest.importorskip('matplotlib')
    log_dir = tmp_path / 'version_4'
    log_dir.mkdir()
    (log_dir / 'metrics.csv').write_text(
        'epoch,step,loss\n0,1,0.9\n0,2,0.8\n1,3,0.7\n1,4,0.6\n2,5,\n')
    figure = notebook.plot(log_dir, metrics='loss', x='epoch')
    line = figure.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [0.0, 1.0]
    assert list(line.get_ydata()) == [0.8, 0.6]
    assert figure.axes[0].get_legend().get_texts()[0].get_text() == 'version_4'


def test_plot_misuse_is_named(logs):
    pytest.importorskip('matplotlib')
    with pytest.raises(MisconfigurationException, match=r"x='time'"):
        notebook.plot(version_dir(logs, 0), x='time')
    with pytest.raises(MisconfigurationException, match=r"'no_such_metric'.*val_loss"):
        notebook.plot(version_dir(logs, 0), metrics=('no_such_metric',))


def test_plot_without_matplotlib_says_how_to_install(logs, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)  # import now fails
    with pytest.raises(MisconfigurationException, match=r'pip install -e "\.\[plot\]"'):
        notebook.plot(version_dir(logs, 0))


def test_load_best_returns_the_best_checkpoints_weights(logs):
    row = notebook.runs(logs).iloc[1]
    model = notebook.load_best(row, TinyModel)
    saved = torch.load(row['best_checkpoint'], map_location='cpu', weights_only=False)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved['state_dict'][name]), name
    assert model.hparams.lr == 0.01


def test_load_best_picks_the_best_value_among_several(logs, tmp_path):
    """Two best-by-metric files and a last.ckpt: the lower val_loss wins, not the newest."""
    best_0 = notebook.runs(logs)['best_checkpoint'][0]
    best_1 = notebook.runs(logs)['best_checkpoint'][1]
    folder = tmp_path / 'version_0' / 'checkpoints'
    folder.mkdir(parents=True)
    shutil.copyfile(best_0, folder / 'epoch=1-step=16-val_loss=0.1000.ckpt')
    shutil.copyfile(best_1, folder / 'epoch=2-step=24-val_loss=0.2000.ckpt')
    shutil.copyfile(best_1, folder / 'last.ckpt')
    model = notebook.load_best(tmp_path / 'version_0', TinyModel)
    assert model.hparams.lr == 0.05
    expected = torch.load(best_0, map_location='cpu', weights_only=False)['state_dict']
    assert torch.equal(model.layer.weight, expected['layer.weight'])


class ScoresByEpoch(TinyModel):
    """validation_end reports a made-up 'val_f1' per epoch: best (highest) in epoch 1."""

    def validation_end(self, outputs):
        return {'val_f1': (0.2, 0.9, 0.5)[self.trainer.state.epoch]}


def test_load_best_ranks_in_the_mode_the_run_monitored(tmp_path):
    """ModelCheckpoint(monitor='val_f1', mode='max', save_best_only=False) keeps a file per
    validation: load_best takes the highest val_f1 (the run's recorded mode), although the
    name has no 'acc' in it (the name rule alone would take the lowest)."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    folder = tmp_path / 'checkpoints'
    trainer = Trainer(default_save_path=str(tmp_path), progress_bar=False, experiment=False,
                      print_weights_summary=False, max_nb_epochs=3, early_stop_callback=False,
                      checkpoint_callback=ModelCheckpoint(str(folder), monitor='val_f1',
                                                          mode='max', save_best_only=False))
    trainer.fit(ScoresByEpoch())
    names = sorted(os.listdir(folder))
    assert [n for n in names if 'val_f1' in n] and 'last.ckpt' in names
    best = notebook._best_checkpoint(str(tmp_path))
    assert os.path.basename(best).endswith('val_f1=0.9000.ckpt'), names
    model = notebook.load_best(str(tmp_path), TinyModel)
    saved = torch.load(best, map_location='cpu', weights_only=False)['state_dict']
    assert torch.equal(model.layer.weight, saved['layer.weight'])


def test_load_best_falls_back_to_last_and_names_a_run_without_checkpoints(logs, tmp_path):
    folder = tmp_path / 'version_0' / 'checkpoints'
    folder.mkdir(parents=True)
    shutil.copyfile(notebook.runs(logs)['best_checkpoint'][1], folder / 'last.ckpt')
    assert notebook.load_best(str(tmp_path / 'version_0'), TinyModel).hparams.lr == 0.01
    shutil.copyfile(notebook.runs(logs)['best_checkpoint'][0], folder / 'hpc_ckpt_2.ckpt')
    shutil.copyfile(notebook.runs(logs)['best_checkpoint'][1], folder / 'hpc_ckpt_10.ckpt')
    os.remove(folder / 'last.ckpt')  # a SLURM job preempted early: its newest HPC file
    assert notebook.load_best(tmp_path / 'version_0', TinyModel).hparams.lr == 0.01
    for name in ('hpc_ckpt_2.ckpt', 'hpc_ckpt_10.ckpt'):
        os.remove(folder / name)
    with pytest.raises(MisconfigurationException, match='no \\*.ckpt file'):
        notebook.load_best(tmp_path / 'version_0', TinyModel)


def test_runs_falls_back_to_meta_tags_and_to_no_status(logs, tmp_path):
    """Logs without hparams.json (older runs) and without run_status.json."""
    copy = tmp_path / 'lightning_logs' / 'version_3'
    shutil.copytree(version_dir(logs, 1), copy)
    os.remove(copy / 'hparams.json')
    os.remove(copy / 'run_status.json')
    row = notebook.runs(tmp_path).iloc[0]
    assert row['version'] == 3
    assert row['lr'] == 0.01 and row['batch_size'] == 8
    assert row['status'] is None


def test_plot_labels_leave_out_a_version_hyperparameter(tmp_path):
    for version, lr in ((0, 0.1), (1, 0.2)):
        folder = tmp_path / f'version_{version}'
        folder.mkdir()
        (folder / 'meta_tags.csv').write_text(f'key,value\nlr,{lr}\nversion,{version}\n')
        (folder / 'metrics.csv').write_text('step,val_loss\n1,0.5\n2,0.4\n')
    assert notebook._labels([tmp_path / 'version_0', tmp_path / 'version_1']) == [
        'version_0: lr=0.1', 'version_1: lr=0.2']

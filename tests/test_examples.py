"""The examples run end to end and learn: seed example, digits MLP, and the launcher."""
import csv
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, 'examples')
sys.path.insert(0, EXAMPLES)

import digits  # noqa: E402
import seed_example  # noqa: E402
import trainer_main  # noqa: E402


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def read_tags(path):
    return {row['key']: row['value'] for row in read_csv(path)}


def test_seed_example_learns_better_than_chance(tmp_path):
    trainer = seed_example.main(['--max_nb_epochs', '1', '--save_path', str(tmp_path)])

    model = trainer.module
    assert model.hparams.out_features == 20  # the model's own argument was parsed
    acc = float(trainer.callback_metrics['total_acc'])  # from the seed's validation_end
    assert acc > 3 * (1 / seed_example.NB_CLASSES), acc  # chance is 0.05

    log_dir = tmp_path / 'lightning_logs' / 'version_0'
    rows = read_csv(log_dir / 'metrics.csv')
    assert any(row.get('total_acc') for row in rows)
    assert read_tags(log_dir / 'meta_tags.csv')['optimizer_name'] == 'adam'

    # get_save_dict / load_model_specific round-trip through a file
    torch.save(model.get_save_dict(), tmp_path / 'ckpt.pt')
    restored = seed_example.ExampleModel()
    restored.load_model_specific(torch.load(tmp_path / 'ckpt.pt'))
    for name, value in model.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name


def test_digits_reaches_95_percent(tmp_path):
    results = digits.main(['--save_path', str(tmp_path)])

    assert results['val_acc'] >= 0.95, results
    assert results['test_acc'] >= 0.90, results
    assert results['trainer'].callback_metrics['test_acc'] == results['test_acc']

    log_dir = tmp_path / 'lightning_logs' / 'version_0'
    rows = read_csv(log_dir / 'metrics.csv')
    val_accs = [float(row['val_acc']) for row in rows if row.get('val_acc')]
    assert len(val_accs) == results['trainer'].current_epoch + 1  # one validation per epoch
    assert val_accs[-1] == pytest.approx(results['val_acc'])
    assert any(row.get('test_acc') for row in rows)
    tags = read_tags(log_dir / 'meta_tags.csv')
    assert tags['hidden_dim'] == '128' and tags['batch_size'] == '32'


@pytest.mark.parametrize('model_name, own_arg, learning_rate', [
    ('seed_example', 'out_features', 0.01),
    ('digits', 'hidden_dim', 0.003),  # digits sets its own default for the shared flag
])
def test_trainer_main_runs_each_registered_model(tmp_path, model_name, own_arg, learning_rate):
    assert model_name in trainer_main.AVAILABLE_MODELS
    results = trainer_main.main(['--model_name', model_name, '--max_nb_epochs', '1',
                                 '--save_path', str(tmp_path)])

    log_dir = tmp_path / model_name / 'version_0'  # exp name defaults to the model name
    assert os.path.samefile(results['log_dir'], log_dir)
    rows = read_csv(log_dir / 'metrics.csv')
    assert rows and all(row['epoch'] in ('0', '0.0') for row in rows if row.get('epoch'))
    metric = 'total_acc' if model_name == 'seed_example' else 'val_acc'
    assert any(row.get(metric) for row in rows)

    tags = read_tags(log_dir / 'meta_tags.csv')
    assert tags['model_name'] == model_name
    assert tags['max_nb_epochs'] == '1'
    assert float(tags['learning_rate']) == learning_rate
    assert own_arg in tags  # added by the model's add_model_specific_args


def test_trainer_main_runs_as_a_script(tmp_path):
    """``python examples/trainer_main.py`` works from a source checkout (not pip-installed)."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, 'trainer_main.py'), '--model_name',
         'seed_example', '--max_nb_epochs', '1', '--exp_name', 'script_run'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_dir = tmp_path / 'script_run' / 'version_0'  # --save_path defaults to the cwd
    assert read_csv(log_dir / 'metrics.csv')
    assert read_tags(log_dir / 'meta_tags.csv')['exp_name'] == 'script_run'


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    import re
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')
    code = re.findall(r"```python\n(.*?)```", open(readme).read(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, 'README.md', 'exec'), namespace)
    folder = tmp_path / 'lightning_logs' / 'version_0'
    assert (folder / 'metrics.csv').exists() and (folder / 'checkpoints' / 'last.ckpt').exists()

"""Makes docs/sweep_curves.png, the figure of docs/tutorial.md: a real 4-trial sweep of the
digits example, compared with pytorch_lightning.notebook.

    python docs/make_sweep_plot.py              # ~30 s on 2 cores; writes docs/sweep_curves.png
    python docs/make_sweep_plot.py --keep DIR   # keep the sweep's logs in DIR

It runs exactly the tutorial's commands: the sweep through examples/trainer_main.py, then
``notebook.runs``, ``notebook.plot`` and ``notebook.load_best``.
"""
import argparse
import os
import subprocess
import sys
import tempfile

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'examples'))

from pytorch_lightning import notebook  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--keep', default=None,
                        help='folder for the sweep (default: a temporary one)')
    parser.add_argument('--out', default=os.path.join(DOCS, 'sweep_curves.png'))
    args = parser.parse_args()
    save_path = args.keep or tempfile.mkdtemp(prefix='sweep_plot_')

    # the sweep: the first 4 points of the digits grid, 2 at a time, 5 epochs each
    subprocess.run([sys.executable, os.path.join(ROOT, 'examples', 'trainer_main.py'),
                    '--model_name', 'digits', '--exp_name', 'digits_sweep', '--search', 'grid',
                    '--nb_trials', '4', '--workers', '2', '--max_nb_epochs', '5',
                    '--save_path', save_path], check=True, timeout=600)

    # compare: one row per trial, curves of every trial, the best model
    table = notebook.runs(save_path, 'digits_sweep')
    print(table[['version', 'learning_rate', 'status', 'val_loss_best', 'val_acc_best']])
    notebook.plot(table, metrics=('val_loss', 'val_acc'), x='epoch', path=args.out)
    print(f'wrote {args.out}')

    from digits_search import DigitsSearchModel
    best = table.sort_values('val_loss_best').iloc[0]
    model = notebook.load_best(best, DigitsSearchModel)
    model.eval()
    x, y = model.splits['val'].tensors
    acc = (model(x).argmax(1) == y).float().mean().item()
    print(f"best: version {best['version']}, val_acc of the loaded model {acc:.3f}")


if __name__ == '__main__':
    main()

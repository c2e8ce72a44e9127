"""Classify scikit-learn's bundled 8x8 digits (1797 images, no download) with a small MLP.

    python examples/digits.py                       # logs to ./lightning_logs/version_<n>
    python examples/digits.py --save_path /tmp/runs --max_nb_epochs 20
    python examples/digits.py --gpus 1                # on the first GPU

The contract: you write the science in a ``RootModule`` (what a step computes, which data,
which optimizer); ``Trainer(...).fit(model)`` runs the loop, the progress bar and the logs.
"""
import os
import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler
from test_tube import HyperOptArgumentParser
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:
    from pytorch_lightning import RootModule, Trainer
except ImportError:  # running from a source checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from pytorch_lightning import RootModule, Trainer


class DigitsModel(RootModule):
    def __init__(self, hparams):
        super().__init__(hparams)  # stores hparams: they are tagged in the experiment's logs
        self.net = nn.Sequential(nn.Linear(64, hparams.hidden_dim), nn.ReLU(),
                                 nn.Dropout(hparams.drop_prob), nn.Linear(hparams.hidden_dim, 10))
        # a fixed, seeded 70/15/15 split; features standardised with the training statistics
        x, y = load_digits(return_X_y=True)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).numpy()
        cut1, cut2 = int(0.7 * len(y)), int(0.85 * len(y))
        parts = {'train': order[:cut1], 'val': order[cut1:cut2], 'test': order[cut2:]}
        scaler = StandardScaler().fit(x[parts['train']])
        features = torch.tensor(scaler.transform(x), dtype=torch.float32)
        self.splits = {name: TensorDataset(features[i], torch.tensor(y[i]))
                       for name, i in parts.items()}

    def forward(self, x):
        return self.net(x)

    # TRAINING: one batch in, the loss out. The trainer calls backward() and the optimizer.
    # Return the loss, (loss, dict) or {'loss': ..., 'prog': {...}}: 'prog' goes to the bar.
    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        logits = self(x)
        acc = (logits.argmax(1) == y).float().mean()
        return {'loss': F.cross_entropy(logits, y), 'prog': {'train_acc': acc}}

    # VALIDATION: runs in eval mode under no_grad. Each step returns a dict; the *_end method
    # gets the list of all of them and returns the metrics (logged and shown in the bar).
    def validation_step(self, data_batch, batch_nb):
        return self._evaluate(data_batch, 'val')

    def validation_end(self, outputs):
        return self._collate(outputs, 'val')

    # TEST: the same, run by trainer.test() after fit
    def test_step(self, data_batch, batch_nb):
        return self._evaluate(data_batch, 'test')

    def test_end(self, outputs):
        return self._collate(outputs, 'test')

    def _evaluate(self, data_batch, prefix):
        x, y = data_batch
        logits = self(x)
        return {f'{prefix}_loss_sum': F.cross_entropy(logits, y, reduction='sum'),
                f'{prefix}_correct': (logits.argmax(1) == y).sum(), 'n': len(y)}

    def _collate(self, outputs, prefix):
        # sum counts over batches (a mean of batch means would overweight a short last batch)
        n = sum(out['n'] for out in outputs)
        return {f'{prefix}_loss': sum(out[f'{prefix}_loss_sum'] for out in outputs).item() / n,
                f'{prefix}_acc': sum(out[f'{prefix}_correct'] for out in outputs).item() / n}

    # OPTIMIZER and DATA: read once when fit (or test) starts
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)

    def _loader(self, name):
        return DataLoader(self.splits[name], batch_size=self.hparams.batch_size,
                          shuffle=name == 'train', generator=torch.Generator().manual_seed(0))

    @property
    def tng_dataloader(self):
        return self._loader('train')

    @property
    def val_dataloader(self):
        return self._loader('val')

    @property
    def test_dataloader(self):
        return self._loader('test')

    # ARGUMENTS: this model's own flags, added to the launcher's parser
    @staticmethod
    def add_model_specific_args(parent_parser):
        parser = HyperOptArgumentParser(strategy=parent_parser.strategy, parents=[parent_parser])
        parser.add_argument('--hidden_dim', default=128, type=int)
        parser.add_argument('--drop_prob', default=0.2, type=float)
        parser.add_argument('--batch_size', default=32, type=int)
        parser.set_defaults(learning_rate=0.003)  # this model's default for a launcher flag
        return parser


def main(argv=None):
    parser = HyperOptArgumentParser(strategy='grid_search', add_help=False)
    parser.add_argument('--learning_rate', default=0.003, type=float)
    parser.add_argument('--max_nb_epochs', default=10, type=int)
    parser.add_argument('--save_path', default=os.getcwd(), help='parent of lightning_logs/')
    parser.add_argument('--gpus', default=None, help='e.g. 1, "0,1" or -1 (all); none: the CPU')
    hparams = DigitsModel.add_model_specific_args(parser).parse_args(argv)

    torch.manual_seed(0)  # same initial weights and dropout masks every run
    model = DigitsModel(hparams)
    trainer = Trainer(default_save_path=hparams.save_path, max_nb_epochs=hparams.max_nb_epochs,
                      gpus=hparams.gpus)
    trainer.fit(model)
    val_acc = trainer.callback_metrics['val_acc']  # from the last validation_end
    test_acc = trainer.test()['test_acc']
    print(f'val_acc={val_acc:.4f} test_acc={test_acc:.4f}')
    return {'val_acc': val_acc, 'test_acc': test_acc, 'trainer': trainer}


if __name__ == '__main__':
    results = main()
    if results['val_acc'] < 0.95:
        print('FAILED: validation accuracy below 0.95', file=sys.stderr)
        sys.exit(1)

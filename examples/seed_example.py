"""The seed README's ``ExampleModel``, as written there, with its placeholders filled in.

The data is synthetic and generated locally (no download): 100-d Gaussian inputs whose class
(one of 20) is the argmax of a fixed, seeded linear map, so ``nn.Linear(100, 20)`` can learn it.

    python examples/seed_example.py --max_nb_epochs 2 --learning_rate 0.01
"""
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_tube import HyperOptArgumentParser
from torch.utils.data import DataLoader, TensorDataset

try:
    from pytorch_lightning import RootModule, Trainer
except ImportError:  # running from a source checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from pytorch_lightning import RootModule, Trainer

IN_FEATURES, NB_CLASSES = 100, 20
SPLIT_SIZES = {'train': 4000, 'val': 1000, 'test': 1000}
SPLIT_SEEDS = {'train': 1, 'val': 2, 'test': 3}
BATCH_SIZE = 64


# --------------------------------------------------------------------------- the placeholders
def make_split(split):
    """``(x, y)`` for one split: the same hidden linear map (seed 0) labels every split."""
    weights = torch.randn(IN_FEATURES, NB_CLASSES, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(SPLIT_SEEDS[split])
    x = torch.randn(SPLIT_SIZES[split], IN_FEATURES, generator=gen)
    y = (x @ weights).argmax(dim=1)
    return x, y


def pytorch_dataloader(split):
    x, y = make_split(split)
    shuffle_gen = torch.Generator().manual_seed(0) if split == 'train' else None
    return DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=split == 'train',
                      generator=shuffle_gen)


def some_loss(y_hat, y):
    return F.cross_entropy(y_hat, y)


def calculate_acc(y_hat, y):
    return (y_hat.argmax(dim=1) == y).float().mean()


# --------------------------------------------------------------------------- the seed's model
class ExampleModel(RootModule):
    def __init__(self):
        # no super().__init__(): RootModule sets up nn.Module before this runs
        self.l1 = nn.Linear(100, 20)

    # TRAINING
    def training_step(self, data_batch):
        # your dataloader decides what each batch looks like
        x, y = data_batch
        y_hat = self.l1(x)
        loss_val = some_loss(y_hat, y)

        tqdm_dic = {'train_loss': loss_val}

        # must return scalar, dict for logging
        return loss_val, tqdm_dic

    def validation_step(self, data_batch):
        # same as training...
        x, y = data_batch
        y_hat = self.l1(x)
        loss_val = some_loss(y_hat, y)

        # val specific
        acc = calculate_acc(y_hat, y)

        tqdm_dic = {'train_loss': loss_val, 'val_acc': acc, 'whatever_you_want': 'a'}
        return loss_val, tqdm_dic

    def validation_end(self, outputs):
        total_accs = []

        # given to you by the framework with all validation outputs.
        # chance to collate
        for output in outputs:
            total_accs.append(output['val_acc'].item())

        # return a dict
        return {'total_acc': np.mean(total_accs)}

    # SAVING
    def get_save_dict(self):
        # lightning saves for you. Here's your chance to say what you want to save
        checkpoint = {'state_dict': self.state_dict()}

        return checkpoint

    def load_model_specific(self, checkpoint):
        # lightning loads for you. Here's your chance to say what you want to load
        self.load_state_dict(checkpoint['state_dict'])
        pass

    # TRAINING CONFIG
    def configure_optimizers(self):
        # give lightning the list of optimizers you want to use.
        # lightning will call automatically
        optimizer = self.choose_optimizer(self.hparams.optimizer_name, self.parameters(),
                                          {'lr': self.hparams.learning_rate}, 'optimizer')
        self.optimizers = [optimizer]
        return self.optimizers

    # LIGHTING WILL USE THE LOADERS YOU DEFINE HERE
    @property
    def tng_dataloader(self):
        return pytorch_dataloader('train')

    @property
    def val_dataloader(self):
        return pytorch_dataloader('val')

    @property
    def test_dataloader(self):
        return pytorch_dataloader('test')

    # MODIFY YOUR COMMAND LINE ARGS
    @staticmethod
    def add_model_specific_args(parent_parser):
        parser = HyperOptArgumentParser(strategy=parent_parser.strategy, parents=[parent_parser])
        parser.add_argument('--out_features', default=20, type=int)
        return parser


# --------------------------------------------------------------------------- running it
def build_parser():
    # add_help=False: the model's parser (built with parents=[this]) adds -h itself
    parser = HyperOptArgumentParser(strategy='grid_search', add_help=False)
    parser.add_argument('--learning_rate', default=0.01, type=float)
    parser.add_argument('--optimizer_name', default='adam')
    parser.add_argument('--max_nb_epochs', default=2, type=int)
    parser.add_argument('--save_path', default=None,
                        help='folder for lightning_logs/ (default: a new temporary folder)')
    return ExampleModel.add_model_specific_args(parser)


def main(argv=None):
    hparams = build_parser().parse_args(argv)
    save_path = hparams.save_path or tempfile.mkdtemp(prefix='seed_example_')

    torch.manual_seed(0)  # same initial weights every run
    model = ExampleModel()
    model.hparams = hparams  # the seed's __init__ takes no arguments

    trainer = Trainer(default_save_path=save_path, max_nb_epochs=hparams.max_nb_epochs)
    trainer.fit(model)

    # callback_metrics: the last training step's dict and loss, and validation_end's dict
    metrics = {k: v.item() if hasattr(v, 'item') else v
               for k, v in trainer.callback_metrics.items()}
    print(f"final metrics: {metrics}")
    print(f"logs: {os.path.join(save_path, 'lightning_logs')}")
    return trainer


if __name__ == '__main__':
    main()

"""Every ```python block of README.md and docs/*.md runs, so a doc example that breaks fails CI.

Each block is one test, named ``<file>:<line of the fence>``. It runs as its own script in a
fresh interpreter (``sys.executable``), in a temporary folder, with the repository on
``PYTHONPATH``. The block's code is compiled under the doc's own file name and line numbers,
so a traceback points at the doc line that failed. A failure shows the script's output.

An HTML comment on the line right before the fence says how to run a block that cannot run
alone (the contributor notes in docs/index.md list them too):

- ``<!-- snippet: continues -->``: run the page's previous runnable block first (with what
  that block needs), in the same script: for a page that builds one example step by step.
- ``<!-- snippet: setup=NAME -->``: run ``SETUPS[NAME]`` below first: the imports of a
  reference page, or a tiny ``MyModel``, a ``model``, a ``trainer``, a finished run on disk.
- ``<!-- snippet: signature -->``: the block shows a signature, not a script: a call
  ``Name(arg, key=default, ...)`` (or ``self.method(...)`` for a ``RootModule`` method) whose
  every argument must be a parameter of the real callable (positional ones in order), each
  ``key=default`` with exactly the code's default; or a ``def method(self, ...)`` of
  ``RootModule``, whose parameters and defaults must be exactly the real ones. ``Name`` is any
  public name of ``pytorch_lightning``, ``.callbacks`` or ``.loggers``. Checked in this
  process, nothing is run.
- ``<!-- snippet: skip (reason) -->``: not run (a GPU, SLURM, several machines, the network;
  or not Python at all). The reason is required and shows in the test report.
"""
import ast
import glob
import inspect
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS_FILE = os.path.abspath(__file__)
TIMEOUT_S = 90  # per block; the slowest (a 2-process DDP fit) takes a few seconds
WORKERS = 2  # blocks running at once: most of a block's time is one core importing torch
OUTPUT_TAIL = 4000  # characters of stdout and of stderr shown for a failing block

FENCE = re.compile(r'^```python\s*$')
MARKER = re.compile(r'^<!--\s*snippet:\s*(?P<options>.*?)\s*-->\s*$')
SKIP = re.compile(r'^skip\s*\((?P<reason>.*\S.*)\)$')

# What a fragment may need before it runs: name -> (the setup it builds on, or None; code).
# The code is plain Python run at the top of the script; names that only serve the setup start
# with an underscore. ``_REPO_ROOT`` (the repository) is defined for them.
SETUPS = {}

SETUPS['imports'] = None, '''\
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from test_tube import HyperOptArgumentParser

from pytorch_lightning import RootModule, Trainer, data_loader
from pytorch_lightning.callbacks import Callback
'''

# ``MyModel``: the docs' placeholder for "your model". A 4 -> 8 -> 2 MLP on random points (the
# label is the sign of the first feature) that passes 95% validation accuracy in its second
# epoch of 8 batches; it has hparams (so its logs are tagged), a test loader, and a tunable
# argument (so a sweep's parser accepts it).
SETUPS['model'] = 'imports', '''\


def _toy_loader(n, seed, shuffle=False):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32, shuffle=shuffle)


class MyModel(RootModule):
    def __init__(self, hparams=None):
        super().__init__(hparams if hparams is not None else argparse.Namespace(hidden_dim=8))
        self.net = nn.Sequential(nn.Linear(4, self.hparams.hidden_dim), nn.ReLU(),
                                 nn.Linear(self.hparams.hidden_dim, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, data_batch, batch_nb):
        x, y = data_batch
        loss = F.cross_entropy(self(x), y)
        return loss, {'train_loss': loss}

    def validation_step(self, data_batch, batch_nb):
        x, y = data_batch
        out = self(x)
        return F.cross_entropy(out, y), {'val_acc': (out.argmax(1) == y).float().mean()}

    def test_step(self, data_batch, batch_nb):
        x, y = data_batch
        out = self(x)
        return F.cross_entropy(out, y), {'test_acc': (out.argmax(1) == y).float().mean()}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)

    @property
    def tng_dataloader(self):
        return _toy_loader(256, seed=0, shuffle=True)

    @property
    def val_dataloader(self):
        return _toy_loader(128, seed=1)

    @property
    def test_dataloader(self):
        return _toy_loader(128, seed=2)

    @staticmethod
    def add_model_specific_args(parent_parser):
        parser = HyperOptArgumentParser(strategy=parent_parser.strategy, parents=[parent_parser])
        parser.opt_list('--hidden_dim', default=8, type=int, options=[8, 16], tunable=True)
        return parser


torch.manual_seed(0)
model = MyModel()
'''

SETUPS['trainer'] = 'model', '''\
trainer = Trainer(max_nb_epochs=2)
'''

# A finished run in ./lightning_logs/version_0 (metrics.csv, tags, checkpoints) and its final
# weights in ./weights.ckpt: what "load the model you trained" examples start from.
SETUPS['trained'] = 'model', '''\
_trainer = Trainer(max_nb_epochs=2, progress_bar=False)
_trainer.fit(MyModel())
_trainer.save_checkpoint('weights.ckpt')
del _trainer
'''

# What docs/tutorial.md's sweep leaves in ./runs/digits_sweep: two versions of the digits model
# with different learning rates, trained briefly.
SETUPS['sweep'] = None, '''\
import argparse
import os
import sys

sys.path.insert(0, os.path.join(_REPO_ROOT, 'examples'))
from digits_search import DigitsSearchModel as _DigitsSearchModel
from pytorch_lightning import Trainer as _Trainer
from pytorch_lightning.loggers import TestTubeLogger as _TestTubeLogger

for _version, _lr in enumerate([0.02, 0.0005]):
    _hparams = argparse.Namespace(hidden_dim=32, drop_prob=0.0, learning_rate=_lr, batch_size=64)
    _logger = _TestTubeLogger(save_dir='runs', name='digits_sweep', version=_version)
    _Trainer(logger=_logger, max_nb_epochs=2, progress_bar=False).fit(
        _DigitsSearchModel(_hparams))
'''

# Environment variables that would make a snippet behave differently from a laptop's shell:
# a SLURM job or a torchrun world around the test run, or a sweep's parent process.
FOREIGN_ENV = re.compile(r'^(SLURM_|PL_|TORCHELASTIC_)|^(RANK|LOCAL_RANK|WORLD_SIZE|'
                         r'LOCAL_WORLD_SIZE|GROUP_RANK|MASTER_ADDR|MASTER_PORT|NODE_RANK)$')


@dataclass
class Block:
    path: str  # relative to the repository root
    line: int  # the line of the opening fence, 1-based
    source: str = field(repr=False)
    options: dict = field(default_factory=dict)
    marker_error: str = None
    # the page's previous runnable block (for 'continues')
    previous: 'Block' = field(default=None, repr=False)

    @property
    def id(self):
        return f'{self.path}:{self.line}'

    @property
    def runnable(self):
        return not ({'skip', 'signature'} & set(self.options))


def parse_marker(text):
    """``'continues setup=model'`` -> ``{'continues': True, 'setup': 'model'}``; raises
    ValueError for anything else."""
    skip = SKIP.match(text)
    if skip:
        return {'skip': skip.group('reason').strip()}
    if text.startswith('skip'):
        raise ValueError('write the reason in parentheses: <!-- snippet: skip (why) -->')
    options = {}
    for word in text.split():
        if word in ('continues', 'signature'):
            options[word] = True
        elif word.startswith('setup='):
            name = word[len('setup='):]
            if name not in SETUPS:
                raise ValueError(f'unknown setup {name!r}; the setups are {sorted(SETUPS)}')
            options['setup'] = name
        else:
            raise ValueError(f'unknown option {word!r}: use continues, setup=NAME, signature '
                             f'or skip (reason)')
    if 'signature' in options and len(options) > 1:
        raise ValueError('signature takes no other option')
    if not options:
        raise ValueError('empty marker')
    return options


def is_marker(line):
    """Whether a line is meant as a marker (well-formed or not)."""
    return line.lstrip().startswith('<!--') and 'snippet' in line


def blocks_of(path):
    """The ```python blocks of one Markdown file, in order."""
    rel = os.path.relpath(path, ROOT)
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    blocks, previous, i = [], None, 0
    while i < len(lines):
        if not FENCE.match(lines[i]):
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith('```'):
            end += 1
        block = Block(rel, i + 1, '\n'.join(lines[i + 1:end]) + '\n', previous=previous)
        before = lines[i - 1] if i > 0 else ''
        if MARKER.match(before):
            try:
                block.options = parse_marker(MARKER.match(before).group('options'))
            except ValueError as err:
                block.marker_error = f'{rel}:{i}: bad snippet marker {before!r}: {err}'
            if block.options.get('continues') and previous is None:
                block.marker_error = f'{rel}:{i}: "continues", but no runnable block before it'
        elif is_marker(before):
            block.marker_error = f'{rel}:{i}: malformed snippet marker {before!r}'
        blocks.append(block)
        if block.runnable:
            previous = block
        i = end + 1
    return blocks


def doc_files():
    return [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs',
                                                                             '*.md')))


def all_blocks():
    return [block for path in doc_files() for block in blocks_of(path)]


BLOCKS = all_blocks()


# -- running a block ---------------------------------------------------------------------------

def setup_parts(name):
    """A setup as [(file name, first line, source)], the setups it builds on first. Each is
    compiled under this file's name and the line where its text starts here, so a traceback
    into a setup points into this file."""
    base, source = SETUPS[name]
    with open(THIS_FILE, encoding='utf-8') as f:
        line = f.read().split(source)[0].count('\n') + 1
    return (setup_parts(base) if base else []) + [(THIS_FILE, line, source)]


def script_parts(block):
    """What runs, in order, as [(label, (file name, first line of the code, source))]; the
    label is the setup's name or the block's id."""
    if block.options.get('continues'):
        parts = script_parts(block.previous)
    elif 'setup' in block.options:
        parts = [(f"setup '{block.options['setup']}'", part)
                 for part in setup_parts(block.options['setup'])]
    else:
        parts = []
    return parts + [(block.id, (os.path.join(ROOT, block.path), block.line + 1, block.source))]


RUNNER = '''\
# A doc snippet (see tests/test_doc_snippets.py). Each part is compiled under its own file name,
# padded to its own first line, and run in this module's namespace (so it is __main__).
_REPO_ROOT = {root!r}
for _file, _line, _code in {parts!r}:
    exec(compile('\\n' * (_line - 1) + _code, _file, 'exec'), globals())
'''


def snippet_env():
    env = {k: v for k, v in os.environ.items() if not FOREIGN_ENV.search(k)}
    env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    env['PYTHONUNBUFFERED'] = '1'
    # WORKERS scripts share the runner's few cores: a torch process with one OpenMP thread per
    # core spin-waits whenever another process holds a core, which made a 3 s block take 8 s.
    env['OMP_NUM_THREADS'] = '1'
    return env


def tail(text):
    return text if len(text) <= OUTPUT_TAIL else '...' + text[-OUTPUT_TAIL:]


class Runner:
    """Runs blocks as scripts, ``WORKERS`` at a time, and kills what still runs on close."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(WORKERS)
        self.lock = threading.Lock()
        self.running = set()
        self.closed = False

    def submit(self, block, folder):
        return self.pool.submit(self.run, block, folder)

    def run(self, block, folder):
        """-> (exit code, stdout, stderr) of the block's script, run in ``folder``."""
        script = os.path.join(folder, 'snippet.py')
        with open(script, 'w', encoding='utf-8') as f:
            f.write(RUNNER.format(root=ROOT, parts=[part for _, part in script_parts(block)]))
        with self.lock:
            if self.closed:
                return None, '', 'not run: the test session ended first'
            # its own process group, so a kill also ends the processes the snippet started
            proc = subprocess.Popen([sys.executable, script], cwd=folder, env=snippet_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            self.running.add(proc)
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate(timeout=30)
            err += f'\n[test_doc_snippets] killed after {TIMEOUT_S} s'
        finally:
            with self.lock:
                self.running.discard(proc)
        return proc.returncode, out, err

    def close(self):
        with self.lock:
            self.closed = True
            for proc in self.running:
                kill_group(proc)
        self.pool.shutdown(wait=True, cancel_futures=True)


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended on its own in the meantime
        pass


# -- checking a signature ----------------------------------------------------------------------

def signature_namespace():
    import pytorch_lightning
    from pytorch_lightning import callbacks, loggers
    names = {}
    for module in (pytorch_lightning, callbacks, loggers):
        names.update({k: v for k, v in vars(module).items() if not k.startswith('_')})
    return names


def shown_parameters(arguments):
    """A ``def``'s ast.arguments -> [(name, default node or None)]."""
    positional = arguments.posonlyargs + arguments.args
    defaults = [None] * (len(positional) - len(arguments.defaults)) + arguments.defaults
    shown = list(zip([a.arg for a in positional], defaults))
    shown += [(a.arg, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults)]
    for star in (arguments.vararg, arguments.kwarg):
        if star is not None:
            shown.append((star.arg, None))
    return shown


def signature_problems(statement, names):
    """The ways one statement of a signature block differs from the code (empty: none)."""
    from pytorch_lightning import RootModule
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
        what = f'RootModule.{statement.name}'
        real = getattr(RootModule, statement.name, None)
        shown, exact = shown_parameters(statement.args), True
    elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        call = statement.value
        if isinstance(call.func, ast.Name):
            what, real = call.func.id, names.get(call.func.id)
        elif (isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
              and call.func.value.id == 'self'):
            what = f'RootModule.{call.func.attr}'
            real = getattr(RootModule, call.func.attr, None)
        else:
            return [f'line {statement.lineno}: write Name(...) or self.method(...)']
        if any(not isinstance(a, ast.Name) for a in call.args):
            return [f'line {statement.lineno}: a positional argument must be a parameter name']
        shown = [(a.id, None) for a in call.args] + [(k.arg, k.value) for k in call.keywords]
        exact = False
    else:
        return [f'line {statement.lineno}: a signature block holds only calls and defs']
    if real is None:
        return [f'{what} does not exist']
    params = list(inspect.signature(real).parameters.values())
    if what.startswith('RootModule.') and not isinstance(statement, ast.FunctionDef):
        params = params[1:]  # self.method(...): self is not shown
    real_names = [p.name for p in params]
    problems, last = [], -1
    for name, default in shown:
        if name not in real_names:
            problems.append(f'{what}: no parameter {name!r} (the parameters: {real_names})')
            continue
        index = real_names.index(name)
        if index < last and (exact or default is None):  # the order of keywords is free
            problems.append(f'{what}: {name!r} is shown after a parameter it precedes')
        last = max(last, index)
        real_default = params[index].default
        if default is None:
            if real_default is not inspect.Parameter.empty and exact:
                problems.append(f'{what}: {name!r} has the default {real_default!r}')
            continue
        try:
            value = ast.literal_eval(default)
        except ValueError:
            problems.append(f'{what}: the default of {name!r} is not a literal')
            continue
        if real_default is inspect.Parameter.empty:
            problems.append(f'{what}: {name!r} is shown with the default {value!r}, the code '
                            f'has none')
        elif type(value) is not type(real_default) or value != real_default:
            problems.append(f'{what}: {name!r} is shown with the default {value!r}, the code '
                            f'has {real_default!r}')
    if exact:
        missing = [n for n in real_names if n not in dict(shown)]
        if missing:
            problems.append(f'{what}: the code also takes {missing}')
    return problems


# -- the tests ---------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def started(request, tmp_path_factory):
    """Starts every selected block that runs as a script, in test order, ``WORKERS`` at a
    time; each test then waits for its own. Returns {block id: future}."""
    runner = Runner()
    futures = {}
    for item in request.session.items:
        block = getattr(item, 'callspec', None) and item.callspec.params.get('block')
        if (item.module is request.module and isinstance(block, Block) and block.runnable
                and not block.marker_error):
            futures[block.id] = runner.submit(block, str(tmp_path_factory.mktemp('snippet')))
    yield futures
    runner.close()


def test_every_marker_sits_on_a_block():
    """A marker is read only from the line right before a fence: one anywhere else would be
    silently ignored."""
    misplaced = []
    for path in doc_files():
        with open(path, encoding='utf-8') as f:
            lines = f.read().split('\n')
        for i, line in enumerate(lines):
            if is_marker(line) and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                misplaced.append(f'{os.path.relpath(path, ROOT)}:{i + 1}: {line}')
    assert not misplaced, 'put each marker on the line right before its ```python fence'
    assert any(b.path == 'README.md' for b in BLOCKS) and len(BLOCKS) > 1


@pytest.mark.parametrize('block', BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_snippet(block, started):
    if block.marker_error:
        pytest.fail(block.marker_error, pytrace=False)
    if 'skip' in block.options:
        pytest.skip(f'{block.id}: {block.options["skip"]}')
    if block.options.get('signature'):
        tree = ast.parse(block.source, filename=block.id)
        names = signature_namespace()
        problems = [p for s in tree.body for p in signature_problems(s, names)]
        if problems:
            pytest.fail(f'{block.id}: the signature shown differs from the code:\n'
                        + '\n'.join(problems), pytrace=False)
        return
    returncode, out, err = started[block.id].result(timeout=(TIMEOUT_S + 60) * len(started))
    if returncode != 0:
        ran = ' + '.join(dict.fromkeys(label for label, _ in script_parts(block)))
        pytest.fail(f'{block.id} failed with exit code {returncode} (ran: {ran})\n'
                    f'--- stdout ---\n{tail(out)}\n--- stderr ---\n{tail(err)}', pytrace=False)

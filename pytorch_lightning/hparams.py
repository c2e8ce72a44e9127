"""Glue between hyperparameters (argparse / test-tube) and plain dicts, and the typed copy of
the hyperparameters (``hparams.json``) that keeps ints, floats and the container type."""
import argparse
import ast
import csv
import json
import os
import tempfile

import numpy as np

#: The typed copy of a model's hyperparameters, beside test-tube's ``meta_tags.csv``.
HPARAMS_FILE = 'hparams.json'


def hparams_to_dict(hparams):
    """A plain ``{name: value}`` dict of ``hparams`` (Namespace, dict or object), without
    callables (test-tube namespaces carry methods)."""
    if hparams is None:
        return {}
    if isinstance(hparams, dict):
        items = hparams.items()
    elif isinstance(hparams, argparse.Namespace) or hasattr(hparams, '__dict__'):
        items = vars(hparams).items()
    else:
        return {'hparams': hparams}
    return {k: v for k, v in items if not callable(v) and not k.startswith('_')}


def dict_to_hparams(values):
    """An ``argparse.Namespace`` built from a dict (how saved hparams come back)."""
    return argparse.Namespace(**values)


def model_parser(model_cls, parent_parser=None):
    """A test-tube ``HyperOptArgumentParser`` with ``model_cls``'s own arguments added
    via its ``add_model_specific_args`` staticmethod."""
    if parent_parser is None:
        from test_tube import HyperOptArgumentParser  # lazy: test_tube is slow to import
        parent_parser = HyperOptArgumentParser(strategy='grid_search', add_help=False)
    return model_cls.add_model_specific_args(parent_parser)


def _parse_tag(text):
    if text in ('', 'nan', 'NaN'):
        return None
    if text in ('inf', '-inf'):  # how pandas (test-tube) writes float('inf'); not a literal
        return float(text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_tags_csv(path):
    """Hyperparameters from test-tube's ``meta_tags.csv`` (``key,value`` rows) as a dict,
    values parsed back into Python numbers, bools, None, lists where they look like them
    (``inf`` and ``-inf`` give the infinite floats; empty and ``nan`` give None)."""
    with open(path, newline='') as f:
        return {row['key']: _parse_tag(row['value']) for row in csv.DictReader(f)}



# ------------------------------------------------------------------------------ typed copy
def _json_value(value):
    """``value`` as plain JSON types (see ``typed_hparams``)."""
    if isinstance(value, np.generic):  # numpy scalars: np.int64 -> int, np.float32 -> float
        value = value.item()
    if value is None or type(value) in (bool, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    return str(value)


def typed_hparams(hparams):
    """A JSON-serialisable record of ``hparams`` that keeps its types:
    ``{'container': 'namespace' | 'dict', 'values': {name: value}}``.

    ``container`` is ``'dict'`` for a dict and ``'namespace'`` for anything else (an
    ``argparse.Namespace``, a test-tube namespace, an object with attributes). The names are
    those ``hparams_to_dict`` keeps (no callables, no ``_private`` names). Values become plain
    JSON types: ``None``, bools, ints, floats and strings stay as they are (numpy scalars become
    the Python number or bool they hold), paths become strings, tuples become lists, lists
    and dicts are converted item by item (dict keys become strings), and any other value (a
    tensor, a device, a set) becomes ``str(value)``. ``None`` gives ``None``."""
    if hparams is None:
        return None
    container = 'dict' if isinstance(hparams, dict) else 'namespace'
    values = hparams_to_dict(hparams)
    return {'container': container,
            'values': {str(name): _json_value(value) for name, value in values.items()}}


def hparams_from_typed(record):
    """The hyperparameters a ``typed_hparams`` record describes: a ``dict`` for container
    ``'dict'``, an ``argparse.Namespace`` for ``'namespace'``; ``None`` for ``None``."""
    if record is None:
        return None
    container = record.get('container')
    if container == 'dict':
        return dict(record['values'])
    if container == 'namespace':
        return argparse.Namespace(**record['values'])
    raise ValueError(f"typed hparams record has container {container!r}; expected 'dict' or "
                     f"'namespace' (a record written by typed_hparams).")


def save_hparams_file(folder, hparams):
    """Write ``typed_hparams(hparams)`` as JSON to ``folder/hparams.json`` (creating
    ``folder``) and return that path. Atomic: the JSON goes to a temporary file in the same
    folder, is fsynced and renamed over the old file, so a reader never sees half a file.
    ``None`` hparams write ``null``."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, HPARAMS_FILE)
    fd, tmp = tempfile.mkstemp(prefix=f'.{HPARAMS_FILE}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(typed_hparams(hparams), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_hparams_file(folder):
    """The record in ``folder/hparams.json`` (see ``typed_hparams``); ``None`` when the file is
    absent or holds ``null``. A file that is not such a record raises ``ValueError`` naming it."""
    path = os.path.join(os.fspath(folder), HPARAMS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); delete it or rewrite it with "
                             f"save_hparams_file.") from err
    if record is not None and not (isinstance(record, dict)
                                   and isinstance(record.get('values'), dict)):
        raise ValueError(f"{path} does not hold a typed hparams record ({{'container': ..., "
                         f"'values': {{...}}}}); rewrite it with save_hparams_file.")
    return record


def hparams_beside_tags(tags_csv):
    """``(hparams, source)`` for ``RootModule.load_from_metrics``: from ``hparams.json`` when
    it sits beside ``tags_csv`` (a dict or Namespace, types intact), else
    ``dict_to_hparams(read_tags_csv(tags_csv))``; ``source`` is the file read."""
    folder = os.path.dirname(os.fspath(tags_csv))
    record = load_hparams_file(folder)
    if record is not None:
        return hparams_from_typed(record), os.path.join(folder, HPARAMS_FILE)
    return dict_to_hparams(read_tags_csv(tags_csv)), os.fspath(tags_csv)

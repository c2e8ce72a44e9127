"""Glue between hyperparameters (argparse / test-tube) and plain dicts."""
import argparse
import ast
import csv


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
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_tags_csv(path):
    """Hyperparameters from test-tube's ``meta_tags.csv`` (``key,value`` rows) as a dict,
    values parsed back into Python numbers, bools, None, lists where they look like them."""
    with open(path, newline='') as f:
        return {row['key']: _parse_tag(row['value']) for row in csv.DictReader(f)}


# (temporary until the typed-hparams branch lands: same interface)
HPARAMS_FILE = 'hparams.json'


def typed_hparams(hparams):
    import json
    container = 'dict' if isinstance(hparams, dict) else 'namespace'
    values = json.loads(json.dumps(hparams_to_dict(hparams), default=str))
    return {'container': container, 'values': values}


def hparams_from_typed(record):
    values = dict(record['values'])
    return values if record['container'] == 'dict' else argparse.Namespace(**values)


def save_hparams_file(folder, hparams):
    import json
    import os
    path = os.path.join(folder, HPARAMS_FILE)
    with open(path + '.tmp', 'w') as f:
        json.dump(typed_hparams(hparams), f)
    os.replace(path + '.tmp', path)


def load_hparams_file(folder):
    import json
    import os
    try:
        with open(os.path.join(folder, HPARAMS_FILE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None

"""Import directions from docs/architecture.md, checked by parsing the source."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'pytorch_lightning'


def imports_of(path):
    """(module imported, is_runtime) for every import in ``path``, resolved to package names."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PACKAGE.parent).with_suffix('')
    parts = list(rel.parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    package = parts if path.name == '__init__.py' else parts[:-1]
    type_checking = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and 'TYPE_CHECKING' in ast.dump(node.test):
            type_checking.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        runtime = id(node) not in type_checking
        if isinstance(node, ast.Import):
            found += [(alias.name, runtime) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = '.'.join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append((name, runtime))
            found += [(f'{name}.{alias.name}', runtime) for alias in node.names]
    return found


def sources():
    return sorted(PACKAGE.rglob('*.py'))


def rel(path):
    return str(path.relative_to(PACKAGE))


def test_nothing_imports_the_trainer_at_run_time():
    for path in sources():
        if rel(path) in ('trainer.py', '__init__.py'):
            continue
        for name, runtime in imports_of(path):
            assert not (runtime and name.startswith('pytorch_lightning.trainer')), rel(path)


def test_module_does_not_know_how_it_is_run():
    banned = ('callbacks', 'loggers', 'placement', 'trainer', '_dispatch')
    for name, _ in imports_of(PACKAGE / 'module.py'):
        assert not any(name.startswith(f'pytorch_lightning.{b}') for b in banned), name


def test_pluggable_parts_do_not_import_each_other():
    parts = ('callbacks', 'loggers', 'placement')
    for path in sources():
        top = rel(path).split('/')[0]
        if top not in parts:
            continue
        for name, _ in imports_of(path):
            for other in parts:
                if other != top:
                    assert not name.startswith(f'pytorch_lightning.{other}'), (rel(path), name)


def test_pluggable_parts_import_only_the_layers_below():
    """The layer table: callbacks use the leaves, loggers the exceptions and the hparams
    helpers, placement the exceptions and utilities (imports inside their own folder are not counted)."""
    allowed = {'callbacks': ('exceptions', 'utilities'),
               'loggers': ('exceptions', 'hparams', 'utilities'),
               'placement': ('exceptions', 'utilities')}
    for path in sources():
        top = rel(path).split('/')[0]
        if top not in allowed:
            continue
        for name, _ in imports_of(path):
            if not name.startswith('pytorch_lightning.') or name.startswith(
                    f'pytorch_lightning.{top}'):
                continue
            inside = name[len('pytorch_lightning.'):]
            assert inside.split('.')[0] in allowed[top], (rel(path), name)


def test_test_tube_imported_only_in_adapter_and_parser_glue_lazily():
    allowed = {'loggers/test_tube.py', 'hparams.py'}
    assert all((PACKAGE / name).is_file() for name in allowed), 'a stale entry in allowed'
    for path in sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ''] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            if any(n.split('.')[0] == 'test_tube' for n in names):
                assert rel(path) in allowed, rel(path)
                assert node.col_offset > 0, f'{rel(path)} imports test_tube at module level'


def test_torch_distributed_only_in_ddp_placement():
    for path in sources():
        for name, _ in imports_of(path):
            if name.startswith('torch.distributed'):
                assert rel(path).startswith('placement/ddp'), rel(path)


def test_workflow_helpers_are_imported_by_nothing_in_the_package():
    """``notebook.py`` and ``sweep.py`` sit on top (docs/architecture.md, layer 5)."""
    top = ('pytorch_lightning.notebook', 'pytorch_lightning.sweep')
    for path in sources():
        if rel(path) in ('notebook.py', 'sweep.py'):
            continue
        for name, _ in imports_of(path):
            assert not name.startswith(top), (rel(path), name)

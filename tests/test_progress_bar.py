"""The progress bar as a log file sees it: a fit with the bar on runs in a subprocess whose
stdout and stderr go to one file (not a terminal), unbuffered, so the file holds every write
in the order it happened. tqdm starts each redraw with a carriage return, so the file's
records are its pieces between '\\r' and '\\n'."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from models import TinyModel
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import ModelCheckpoint

    class AccuracyOnly(TinyModel):  # no val_loss: the default EarlyStopping turns itself off
        def validation_step(self, data_batch, batch_nb):
            x, y = data_batch
            return {{'val_acc': (self(x).argmax(1) == y).float().mean()}}

    folder = sys.argv[1]
    Trainer(default_save_path=folder, experiment=False, print_weights_summary=False,
            max_nb_epochs=2, nb_sanity_val_steps=2,
            checkpoint_callback=ModelCheckpoint(filepath=folder + '/ckpt', monitor='val_acc'),
            ).fit(AccuracyOnly(n=32))
""")

INFERRED = ("ModelCheckpoint: monitoring 'val_acc' in 'max' mode (inferred from the name; pass "
            "mode='min' or mode='max' to choose).")
TURNED_OFF = "EarlyStopping: validation_end returned no 'val_loss' (keys: ['val_acc'])"


@pytest.fixture(scope='module')
def output(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bar')
    log = folder / 'fit.log'
    with open(log, 'w') as out:
        subprocess.run([sys.executable, '-u', '-c', SCRIPT.format(tests=TESTS), str(folder)],
                       stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)
    return log.read_text()


def records(text):
    return [r.strip() for r in re.split(r'[\r\n]', text) if r.strip()]


def bar_records(text):
    return [r for r in records(text) if 'batch/s' in r]


def without_timing(record):
    """A bar record without elapsed time, remaining time and rate (they change between two
    draws of the same state)."""
    return re.sub(r'\[[^,\]]*, [^,\]]*', '[', record)


def test_every_bar_line_belongs_to_an_epoch(output):
    bars = bar_records(output)
    assert bars, output
    # no '0batch [00:00, ?batch/s]' bar drawn before the first epoch
    assert all(r.startswith('Epoch ') for r in bars), bars[:3]


def test_description_and_postfix_number_epochs_the_same_way(output):
    seen = set()
    for record in bar_records(output):
        shown, postfix = re.match(r'Epoch (\d+):', record), re.search(r'\bepoch=(\d+)', record)
        if shown and postfix:
            assert postfix.group(1) == shown.group(1), record
            seen.add(shown.group(1))
    assert seen == {'0', '1'}  # the same convention as current_epoch and checkpoint names


def test_no_bar_state_is_drawn_twice_in_a_row(output):
    # (after a notice the bar is drawn again below it: that is not a repeat)
    lines = [without_timing(r) for r in records(output)]
    repeats = [a for a, b in zip(lines, lines[1:]) if a == b]
    assert not repeats, repeats
    states = [without_timing(r) for r in bar_records(output)]
    assert states.count(states[-1]) == 1  # the final line once
    assert output.endswith('\n')


def test_notices_are_whole_lines_not_glued_to_the_bar(output):
    lines = records(output)
    assert INFERRED in lines, output
    assert any(line.startswith(TURNED_OFF) for line in lines), output


def test_an_error_before_the_first_epoch_propagates_with_the_bar_on(quiet):
    from models import TinyModel
    from pytorch_lightning import Trainer

    class BrokenValidation(TinyModel):
        def validation_step(self, data_batch, batch_nb):
            raise ValueError('broken validation_step')

    with pytest.raises(ValueError, match='broken validation_step'):  # no bar error instead
        Trainer(**quiet(progress_bar=True)).fit(BrokenValidation(n=16))

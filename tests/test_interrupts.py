"""Ctrl-C and SIGTERM reach every process of a job; fit must save every row logged before
them, then end the way the signal says (multi-process: each case runs a training script in a
subprocess)."""
import csv
import os
import signal
import subprocess
import sys
import textwrap

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from models import TinyModel
    from pytorch_lightning import Trainer

    class Interrupted(TinyModel):
        def training_step(self, data_batch, batch_nb):
            if self.trainer.state.total_batches == 35:
                # what a terminal's Ctrl-C or a job manager does: signal the whole group
                os.killpg(os.getpgrp(), signal.{signame})
            return super().training_step(data_batch, batch_nb)

    Trainer(default_save_path=sys.argv[1], progress_bar=False, print_weights_summary=False,
            max_nb_epochs=50, nb_sanity_val_steps=0, checkpoint_callback=False,
            early_stop_callback=False).fit(Interrupted(n=400))
""")


@pytest.mark.parametrize('signame, expected_rc', [('SIGINT', -signal.SIGINT), ('SIGTERM', -signal.SIGTERM)])
def test_signal_to_the_process_group_keeps_every_row(tmp_path, signame, expected_rc):
    # SIGINT: KeyboardInterrupt, fit closes the logger. SIGTERM: raised in the main thread
    # during fit, fit closes the logger, then the process dies of SIGTERM.
    proc = subprocess.run([sys.executable, '-c', SCRIPT.format(tests=TESTS, signame=signame),
                           str(tmp_path)], capture_output=True, text=True, timeout=120,
                          start_new_session=True)  # its own group, so the signal stays there
    assert proc.returncode == expected_rc, proc.stderr
    if signame == 'SIGINT':
        assert proc.stderr.rstrip().endswith('KeyboardInterrupt'), proc.stderr  # no note added
    assert 'Traceback' not in proc.stderr or signame == 'SIGINT', proc.stderr
    with open(tmp_path / 'lightning_logs' / 'version_0' / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    # 50 batches per epoch: one row every 10 batches, so rows at batches 10, 20 and 30
    assert [r['epoch'] for r in rows if r['train_loss']] == ['0', '0', '0']

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def quiet_trainer_kwargs(tmp_path, **overrides):
    """Trainer arguments for fast, silent test runs (no bar, no logging, no summary)."""
    kwargs = dict(default_save_path=str(tmp_path), experiment=False, progress_bar=False,
                  print_weights_summary=False, max_nb_epochs=1)
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def quiet(tmp_path):
    return lambda **overrides: quiet_trainer_kwargs(tmp_path, **overrides)

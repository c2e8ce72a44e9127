import contextlib
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


def quiet_trainer_kwargs(tmp_path, **overrides):
    """Trainer arguments for fast, silent test runs (no bar, no logging, no summary)."""
    kwargs = dict(default_save_path=str(tmp_path), experiment=False, progress_bar=False,
                  print_weights_summary=False, max_nb_epochs=1)
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def fake_scontrol(tmp_path):
    """A stand-in for SLURM's ``scontrol`` that records its arguments: returns ``(path,
    calls)``, the ``PATH`` that finds it first and the file each call appends its arguments
    to (``requeue <job>`` after a preemption)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    calls = tmp_path / 'scontrol_calls.txt'
    scontrol = bin_dir / 'scontrol'
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}", calls


@pytest.fixture
def quiet(tmp_path):
    return lambda **overrides: quiet_trainer_kwargs(tmp_path, **overrides)


@pytest.fixture
def two_fake_gpus(monkeypatch):
    """The runner's multi-device path on the CPU: scatter chunks a tuple batch like torch's
    Scatter, every "replica" is the module itself (so gradients add up on its parameters, as
    they do through replicate's Broadcast), and the CUDA device/stream calls do nothing.
    Returns the list of ``replicate`` calls as ``(devices, detach)``."""
    replicated = []

    def scatter(batch, ids):
        return [tuple(piece) for piece in zip(*[t.chunk(len(ids)) for t in batch])]

    def replicate(module, devices, detach):
        replicated.append((devices, detach))
        return [module for _ in devices]

    from pytorch_lightning.placement import data_parallel
    monkeypatch.setattr(data_parallel, 'scatter', scatter)
    monkeypatch.setattr(data_parallel, 'replicate', replicate)
    monkeypatch.setattr(torch.cuda, 'current_stream', lambda device: None)
    monkeypatch.setattr(torch.cuda, 'device', NoDevice)  # torch checks isinstance(x, device)
    return replicated


class NoDevice(contextlib.nullcontext):
    """Stands in for ``torch.cuda.device`` (a class) as a context that does nothing."""

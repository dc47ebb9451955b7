"""Shared fixtures: a clean param store, validation on and a fixed seed for every test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pytest
import torch
from hypothesis import settings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Property tests draw the same examples on every run (no example database either): a
# failure is reproducible, never a one-off of CI. Raise max_examples locally to search more.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")


@pytest.fixture(autouse=True)
def clean_pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    torch.set_num_threads(2)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (CI has it). Missing data is a failure, not a
    skip: these tests are the proof that the loaders read the real files."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing; the real-data tests need ../shared/data.")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bundled():
    from pyro_vae import load_bundled_mnist

    return load_bundled_mnist()


@pytest.fixture
def small_cli_args(bundled, tmp_path) -> list[str]:
    """``pyro-vae train`` options for a quick CLI run on 400 labelled bundled images saved
    as a ``.pt`` file; the first four entries are the data options."""
    x, y = bundled["train"].tensors
    torch.save({"x": x[:400], "y": y[:400]}, tmp_path / "small.pt")
    data = ["--dataset", "file", "--data-file", str(tmp_path / "small.pt")]
    size = ["--epochs", "1", "--hidden-dims", "16", "--latent-dim", "3", "--batch-size", "64"]
    return [*data, *size, "--no-progress"]


@pytest.fixture
def interrupt_after_first_epoch() -> Callable[[list[str], Path], tuple[int, str]]:
    """Run ``python -m pyro_vae ARGS`` in a child, send Ctrl-C (SIGINT) once the file
    ``metrics`` has its first line, and return ``(returncode, output)``."""

    def run(args: list[str], metrics: Path) -> tuple[int, str]:
        env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "pyro_vae", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0].decode()
        return proc.returncode, output

    return run

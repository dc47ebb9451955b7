"""Property-based tests: corrupt files and bad data never crash, hang or turn into NaNs."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    NormalLikelihood,
    StandardNormalPrior,
    fit,
    load_binarized_mnist,
    load_tensor_file,
)
from pyro_vae.cli import main

FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def _npz_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x=rng.random((6, 4)).astype(np.float32), y=np.arange(6))
    return buf.getvalue()


def _amat_gz_bytes() -> bytes:
    rows = np.random.default_rng(0).integers(0, 2, size=(4, 784))
    return gzip.compress(("\n".join(" ".join(map(str, r)) for r in rows) + "\n").encode())


NPZ, AMAT = _npz_bytes(), _amat_gz_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(cut=st.integers(0, len(NPZ) - 1), flip=st.integers(0, len(NPZ) - 1))
def test_damaged_npz_is_a_value_error_or_clean_data(tmp_path, cut, flip):
    blob = bytearray(NPZ)
    blob[flip] ^= 0xFF
    for name, data in (("cut.npz", NPZ[:cut]), ("flip.npz", bytes(blob))):
        (tmp_path / name).write_bytes(data)
        try:
            ds = load_tensor_file(tmp_path / name)
        except ValueError:
            continue
        x = ds.tensors[0]  # a flip inside the payload can leave a readable file ...
        assert x.shape == (6, 4) and x.dtype == torch.float32
        if not torch.isfinite(x).all():  # ... whose NaN/inf must not reach training
            vae = VAE(
                StandardNormalPrior(2),
                NormalLikelihood.mlp(2, (4,), (4,)),
                DiagonalNormalGuide.mlp((4,), 2, (4,)),
            )
            with pytest.raises(ValueError, match="NaN or inf"):
                fit(vae.model, vae.guide, x, epochs=1, batch_size=6, progress=False)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(cut=st.integers(0, len(AMAT) - 1))
def test_truncated_amat_gz_is_a_value_error(tmp_path, cut):
    (tmp_path / "binarized_mnist_test.amat.gz").write_bytes(AMAT[:cut])
    with pytest.raises(ValueError):
        load_binarized_mnist(tmp_path, "test")


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(
    values=st.lists(
        st.sampled_from([0.0, 1.0, 0.5, -1.0, 2.0, float("nan"), float("inf")]),
        min_size=1,
        max_size=6,
    ),
    n=st.integers(1, 6),
)
def test_fit_refuses_bad_data_or_trains_finite(values, n):
    """Each example gets one special value at a random pixel; fit must either name the
    problem in a ValueError or train to a finite ELBO."""
    x = torch.bernoulli(torch.full((n, 1, 28, 28), 0.3, dtype=torch.float32))
    for i, v in enumerate(values[:n]):
        x[i, 0, i, i] = v
    vae = VAE(
        StandardNormalPrior(2),
        BernoulliLikelihood.mlp(2, (1, 28, 28), (8,)),
        DiagonalNormalGuide.mlp((1, 28, 28), 2, (8,)),
    )
    bad = [v for v in values[:n] if v not in (0.0, 1.0)]
    nonfinite = [v for v in bad if not np.isfinite(v)]
    if nonfinite:
        with pytest.raises(ValueError, match="NaN or inf"):
            fit(vae.model, vae.guide, x, epochs=1, batch_size=n, progress=False)
    elif bad:
        with pytest.raises(ValueError, match="binary data"):
            fit(vae.model, vae.guide, x, epochs=1, batch_size=n, progress=False)
    else:
        history = fit(vae.model, vae.guide, x, epochs=1, batch_size=n, progress=False)
        assert np.isfinite(history.last["train_elbo"])
        assert all(torch.isfinite(p).all() for p in vae.parameters())


def test_corrupt_data_file_through_the_cli(tmp_path, capsys):
    (tmp_path / "data.npz").write_bytes(NPZ[: len(NPZ) // 2])
    argv = ["train", "--dataset", "file", "--data-file", str(tmp_path / "data.npz")]
    argv += ["--likelihood", "normal", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "could not be read" in err and "Traceback" not in err


def test_integer_data_file_through_the_cli(tmp_path, capsys):
    np.save(tmp_path / "ints.npy", np.arange(40 * 3).reshape(40, 3))
    argv = ["train", "--dataset", "file", "--data-file", str(tmp_path / "ints.npy")]
    argv += ["--likelihood", "normal", "--epochs", "1", "--batch-size", "8"]
    argv += ["--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "x.float()" in capsys.readouterr().err

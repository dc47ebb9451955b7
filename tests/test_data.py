"""Loaders read the real files with the right shapes and label counts, and corrupt files
give a ValueError, never a crash."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import (
    DynamicBinarization,
    binarize,
    load_binarized_mnist,
    load_mnist,
    load_tensor_file,
    read_idx,
)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_bundled_mnist_splits_and_labels(bundled):
    sizes = {k: len(v) for k, v in bundled.items()}
    assert sizes == {"train": 8000, "valid": 1000, "test": 1000}
    counts = sum(torch.bincount(ds.tensors[1], minlength=10) for ds in bundled.values())
    assert counts.tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    x = bundled["train"].tensors[0]
    assert x.shape == (8000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1
    # grayscale, not binary: many intermediate values
    assert ((x > 0) & (x < 1)).float().mean() > 0.05


def test_mnist_real_files(shared_data):
    train = load_mnist(shared_data / "mnist", "train")
    test = load_mnist(shared_data / "mnist", "test")
    assert train.tensors[0].shape == (60000, 1, 28, 28)
    assert test.tensors[0].shape == (10000, 1, 28, 28)
    assert torch.bincount(train.tensors[1]).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.tensors[1]).tolist() == MNIST_TEST_COUNTS
    # the bundled subset is the first 10k training images, unmodified
    from pyro_vae import load_bundled_mnist

    assert torch.equal(load_bundled_mnist()["train"].tensors[0], train.tensors[0][:8000])


def test_fashion_mnist_real_files(shared_data):
    train = load_mnist(shared_data / "fashion-mnist", "train", kind="fashion-mnist")
    test = load_mnist(shared_data / "fashion-mnist", "test", kind="fashion-mnist")
    assert torch.bincount(train.tensors[1]).tolist() == [6000] * 10
    assert torch.bincount(test.tensors[1]).tolist() == [1000] * 10


def test_binarized_mnist_real_files(shared_data):
    folder = shared_data / "binarized-mnist"
    sizes = {s: load_binarized_mnist(folder, s).tensors[0] for s in ("train", "valid", "test")}
    assert {k: v.shape[0] for k, v in sizes.items()} == {
        "train": 50000,
        "valid": 10000,
        "test": 10000,
    }
    x = sizes["test"]
    assert x.shape[1:] == (1, 28, 28)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert 0.10 < x.mean().item() < 0.16  # MNIST ink density


def test_missing_dir_names_download(tmp_path):
    with pytest.raises(ValueError, match="--download"):
        load_mnist(tmp_path / "nowhere", "train")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_roundtrip_gz_and_plain(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(a))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx_bytes(a)))
    assert torch.equal(read_idx(tmp_path / "a.idx"), torch.from_numpy(a))
    assert torch.equal(read_idx(tmp_path / "a.idx.gz", ndim=3), torch.from_numpy(a))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b"\x00\x00\x09\x03" + b[4:], "magic number"),
        (lambda b: b[:6], "truncated inside its header"),
        (lambda b: b"", "magic number"),
    ],
)
def test_idx_corruption_is_value_error(tmp_path, mutate, message):
    good = _idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    path = tmp_path / "bad.idx"
    path.write_bytes(mutate(good))
    with pytest.raises(ValueError, match=message):
        read_idx(path, ndim=3)


def test_idx_wrong_ndim_and_truncated_gzip(tmp_path):
    path = tmp_path / "labels.idx"
    path.write_bytes(_idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(ValueError, match="swapped"):
        read_idx(path, ndim=3)
    gz = gzip.compress(_idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8)))
    (tmp_path / "cut.idx.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        read_idx(tmp_path / "cut.idx.gz")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blob=st.binary(max_size=64))
def test_idx_random_bytes_never_crash(tmp_path, blob):
    path = tmp_path / "fuzz.idx"
    path.write_bytes(blob)
    try:
        out = read_idx(path)
    except ValueError:
        return
    assert out.dtype == torch.uint8  # the rare valid header: a well-formed array


def test_amat_general_layout_and_errors(tmp_path):
    rows = np.random.default_rng(0).integers(0, 2, size=(3, 784))
    text = "\r\n".join("  ".join(str(v) for v in r) for r in rows) + "\r\n"
    (tmp_path / "binarized_mnist_valid.amat").write_text(text)
    x = load_binarized_mnist(tmp_path, "valid").tensors[0]
    assert torch.equal(x.reshape(3, 784), torch.from_numpy(rows).float())
    (tmp_path / "binarized_mnist_test.amat").write_text("0 1 0\n")
    with pytest.raises(ValueError, match="784 values"):
        load_binarized_mnist(tmp_path, "test")


def test_tensor_files(tmp_path):
    x = np.random.default_rng(0).random((10, 5)).astype(np.float32)
    y = np.arange(10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_tensor_file(tmp_path / "d.npz")
    assert torch.equal(ds.tensors[0], torch.from_numpy(x)) and ds.tensors[1].tolist() == list(y)
    np.save(tmp_path / "d.npy", x)
    assert load_tensor_file(tmp_path / "d.npy").tensors[0].shape == (10, 5)
    torch.save({"x": torch.ones(4, 2)}, tmp_path / "d.pt")
    assert load_tensor_file(tmp_path / "d.pt").tensors[0].sum() == 8
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="could not be read"):
        load_tensor_file(tmp_path / "bad.npz")


def test_static_binarization_is_seeded_and_unbiased():
    p = torch.full((20000,), 0.3)
    a, b = binarize(p, seed=1), binarize(p, seed=1)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert abs(a.mean().item() - 0.3) < 4 * (0.3 * 0.7 / 20000) ** 0.5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(torch.tensor([1.5]))


def test_dynamic_binarization_resamples_and_resumes():
    p = torch.full((1000,), 0.5)
    t = DynamicBinarization(seed=3)
    first = t(p)
    state = t.state_dict()
    second = t(p)
    assert not torch.equal(first, second)  # resampled each call
    resumed = DynamicBinarization(seed=99)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(p), second)  # the same draw after a restore

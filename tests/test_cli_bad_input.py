"""Bad input through the command line: every case ends with exit status 2 and one
``pyro-vae: error: ...`` line that names the fix, never a traceback, and before training
starts (no run directory is left behind with a checkpoint)."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pyro_vae.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL = ["--epochs", "1", "--hidden-dims", "16", "--latent-dim", "2", "--batch-size", "32"]
SMALL += ["--no-progress"]


def _binary(n: int = 200, shape: tuple[int, ...] = (1, 28, 28)) -> np.ndarray:
    return (np.random.default_rng(0).random((n, *shape)) < 0.3).astype(np.float32)


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _with_nan(tmp_path: Path) -> list[str]:
    x = _binary()
    x[5, 0, 3, 3] = np.nan
    return ["--data-file", _npz(tmp_path, x=x)]


def _with_inf(tmp_path: Path) -> list[str]:
    x = _binary()
    x[7, 0, 0, 0] = np.inf
    return ["--data-file", _npz(tmp_path, x=x)]


def _empty(tmp_path: Path) -> list[str]:
    return ["--data-file", _npz(tmp_path, x=np.zeros((0, 1, 28, 28), np.float32))]


def _too_few_for_the_batch(tmp_path: Path) -> list[str]:
    return ["--data-file", _npz(tmp_path, x=_binary(40)), "--batch-size", "128"]  # 32 train


def _integers(tmp_path: Path) -> list[str]:
    return ["--data-file", _npz(tmp_path, x=(_binary() * 255).astype(np.uint8))]


def _grayscale_for_bernoulli(tmp_path: Path) -> list[str]:
    x = np.random.default_rng(0).random((200, 1, 28, 28)).astype(np.float32)
    return ["--data-file", _npz(tmp_path, x=x), "--binarize", "none"]


def _outside_unit_interval(tmp_path: Path) -> list[str]:
    x = _binary() * 2.0
    return ["--data-file", _npz(tmp_path, x=x), "--likelihood", "cbernoulli"]


def _flat_data_for_conv(tmp_path: Path) -> list[str]:
    return ["--data-file", _npz(tmp_path, x=_binary(200, (784,))), "--network", "conv"]


def _float_labels(tmp_path: Path) -> list[str]:
    y = np.linspace(0, 1, 200).astype(np.float32)
    return ["--data-file", _npz(tmp_path, x=_binary(), y=y), "--conditional"]


def _negative_labels(tmp_path: Path) -> list[str]:
    y = np.arange(200) % 3 - 1
    return ["--data-file", _npz(tmp_path, x=_binary(), y=y), "--conditional"]


def _corrupt_npz(tmp_path: Path) -> list[str]:
    path = tmp_path / "data.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")
    return ["--data-file", str(path)]


def _truncated_idx(tmp_path: Path) -> list[str]:
    source = SHARED / "mnist"
    for f in source.iterdir():
        shutil.copy(f, tmp_path / f.name)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(data[: len(data) // 3]))
    return ["--dataset", "mnist", "--data-dir", str(tmp_path)]


def _wrong_magic_idx(tmp_path: Path) -> list[str]:
    source = SHARED / "mnist"
    for f in source.iterdir():
        shutil.copy(f, tmp_path / f.name)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    data = bytearray(gzip.decompress(images.read_bytes()))
    data[2:4] = b"\x0d\x07"  # a float64 type code and a 7-dimensional array
    images.write_bytes(gzip.compress(bytes(data)))
    return ["--dataset", "mnist", "--data-dir", str(tmp_path)]


def _truncated_amat(tmp_path: Path) -> list[str]:
    source = SHARED / "binarized-mnist"
    for f in source.iterdir():
        if f.name.endswith(".amat.gz") or f.name.endswith(".amat"):
            shutil.copy(f, tmp_path / f.name)
    train = next(p for p in tmp_path.iterdir() if "train" in p.name)
    lines = gzip.decompress(train.read_bytes()).splitlines()
    lines[10] = lines[10][: len(lines[10]) // 2]  # a row cut in half
    train.write_bytes(gzip.compress(b"\n".join(lines[:100]) + b"\n"))
    return ["--dataset", "binarized-mnist", "--data-dir", str(tmp_path)]


CASES = {
    "nan": (_with_nan, "NaN"),
    "inf": (_with_inf, "inf"),
    "empty": (_empty, "has 0 examples"),
    "batch larger than the data": (_too_few_for_the_batch, "batch_size <= 32"),
    "integer data": (_integers, r"x.float\(\) / 255"),
    "grayscale for bernoulli": (_grayscale_for_bernoulli, "binarize"),
    "cbernoulli outside [0, 1]": (_outside_unit_interval, r"\[0, 1\]"),
    "flat data for conv networks": (_flat_data_for_conv, "use MLP"),
    "float labels": (_float_labels, "integer class labels"),
    "negative labels": (_negative_labels, "integer class labels"),
    "corrupt npz": (_corrupt_npz, "corrupted"),
    "truncated idx": (_truncated_idx, "train-images-idx3-ubyte"),
    "wrong idx magic": (_wrong_magic_idx, "magic|type"),
    "truncated amat": (_truncated_amat, "amat"),
    "iwae with warm-up": (lambda _: ["--objective", "iwae", "--warmup-steps", "10"], "IWAE"),
    "iwae with free bits": (lambda _: ["--objective", "iwae", "--free-bits", "0.5"], "IWAE"),
    "iwae with beta": (lambda _: ["--objective", "iwae", "--beta", "2"], "IWAE"),
    "latent dim 0": (lambda _: ["--latent-dim", "0"], "latent"),
    "sphere in one dimension": (
        lambda _: ["--prior", "sphere", "--guide", "powerspherical", "--latent-dim", "1"],
        "dim",
    ),
    "cuda without a gpu": (lambda _: ["--device", "cuda"], "--device cpu"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_training_input_exits_2_naming_the_fix(case, tmp_path, capsys):
    make, message = CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    extra = make(data)
    if "--data-file" in extra:
        extra = ["--dataset", "file", *extra]
    out = tmp_path / "run"
    # the case's own option wins over SMALL (argparse keeps the last value)
    code = main(["train", *SMALL, *extra, "--out", str(out)])
    err = capsys.readouterr().err
    if case == "cuda without a gpu":
        import torch

        if torch.cuda.is_available():
            pytest.fail("this check needs a machine without a GPU, as CI is")
    assert code == 2, err
    assert err.startswith("pyro-vae: error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (out / "checkpoint.pt").exists()  # refused before training


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-bad") / "run"
    assert main(["train", *SMALL, "--conditional", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--num-samples", "0"], "--num-samples must be an integer >= 1"),
        (["evaluate", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["ppc", "--num-samples", "-3"], "--num-samples must be an integer >= 1"),
        (["sample", "--num-samples", "0"], "--num-samples must be an integer >= 1"),
        (["sample", "--label", "12"], "12"),
        (["sample", "--label", "-1"], "-1"),
    ],
)
def test_bad_evaluation_options_exit_2_naming_the_fix(trained_run, argv, message, capsys):
    code = main([argv[0], str(trained_run), *argv[1:]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("pyro-vae: error: ") and message in err, err

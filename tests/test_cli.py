"""The ``pyro-vae train`` command: artifacts, resume, interruption and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae import load_checkpoint
from pyro_vae.cli import main
from pyro_vae.train.checkpoint import FORMAT, VERSION

TINY = ["--hidden-dims", "32", "--latent-dim", "4", "--batch-size", "256", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def train(out: Path, *extra: str) -> int:
    return main(["train", "--epochs", "1", *TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert train(out) == 0
    return out


def test_smoke_run_writes_every_artifact(run_dir, capsys):
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.json",
        "checkpoint.pt",
        "metrics.jsonl",
        "test.json",
        "samples.png",
        "reconstructions.png",
    } <= names
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"] == "bundled" and config["binarize"] == "dynamic"
    assert config["x_shape"] == [1, 28, 28]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    for key in (
        "train_elbo",
        "train_kl",
        "train_reconstruction",
        "val_elbo",
        "val_kl",
        "val_reconstruction",
        "seconds",
        "examples_per_s",
    ):
        assert isinstance(record[key], float)
    assert -400 < record["val_elbo"] < -100
    test = json.loads((run_dir / "test.json").read_text())
    assert test["test_elbo"] == pytest.approx(test["test_reconstruction"] - test["test_kl"], 1e-4)
    assert test["num_test"] == 1000
    samples = torch.tensor(np.asarray(Image.open(run_dir / "samples.png")), dtype=torch.float)
    assert samples.shape[:2] == (8 * 30 + 2, 8 * 30 + 2)  # 64 images of 28 px, padding 2
    recon = torch.tensor(np.asarray(Image.open(run_dir / "reconstructions.png")), dtype=float)
    assert recon.shape[:2] == (8 * 30 + 2, 8 * 30 + 2)  # 4 pairs of rows of 8
    assert samples.std() > 10 and recon.std() > 10
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["epoch"] == 1 and state["config"]["latent_dim"] == 4


def test_resume_continues_the_run(run_dir, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    for p in run_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    # A path inside config.json is never trusted as a place to write.
    config = json.loads((copy / "config.json").read_text())
    config["out"] = str(tmp_path / "elsewhere")
    (copy / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(copy), "--epochs", "2", "--no-progress"]) == 0
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads((copy / "config.json").read_text())["batch_size"] == 256  # reused
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latent-dim", "8"], "latent_dim"),
        (["--likelihood", "cbernoulli"], "likelihood"),
    ],
)
def test_resume_with_another_model_names_the_field(run_dir, args, message, capsys):
    assert main(["train", "--resume", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae: error:") and message in err and "does not match" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda:7"], "use --device cpu"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "--download"),
        (["--dataset", "mnist"], "needs --data-dir"),
        (["--dataset", "file"], "needs --data-file"),
        (["--resume", "/nonexistent/run"], "does not exist"),
        (["--latent-dim", "0"], "--latent-dim must be"),
        (["--batch-size", "100000"], "larger than"),
        (["--likelihood", "bernoulli", "--binarize", "none"], "Binarize"),
    ],
)
def test_bad_options_exit_2_with_the_fix(tmp_path, argv, message, capsys):
    if argv[:2] == ["--device", "cuda:7"] and torch.cuda.is_available():
        argv = ["--device", "nonsense"]
        message = "Unknown device"
    assert main(["train", "--epochs", "1", *TINY, "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae: error:") and message in err
    assert "Traceback" not in err


def test_half_written_run_directories(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 2
    assert "no config.json" in capsys.readouterr().err
    (empty / "config.json").write_text('{"dataset": "bund')
    assert main(["train", "--resume", str(empty)]) == 2
    assert "half-written" in capsys.readouterr().err


def test_unwritable_output_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert train(tmp_path / "file" / "run") == 2
    assert "Cannot write the run directory" in capsys.readouterr().err


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout
    for option in ("--dataset", "--likelihood", "--latent-dim", "--objective", "--resume"):
        assert option in out


def test_ctrl_c_writes_a_resumable_checkpoint(tmp_path, interrupt_after_first_epoch):
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    code, text = interrupt_after_first_epoch(
        ["train", "--epochs", "50", *TINY, "--out", str(out)], metrics
    )
    assert code == 130, text
    assert "Traceback" not in text
    assert f"pyro-vae train --resume {out}" in text
    state = load_checkpoint(out / "checkpoint.pt")
    done = state["epoch"]
    assert 1 <= done < 50
    assert main(["train", "--resume", str(out), "--epochs", str(done + 1), "--no-progress"]) == 0
    epochs = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()]
    assert epochs == list(range(1, done + 2))


def test_kill_9_during_checkpoint_writes_keeps_the_previous_one(tmp_path):
    """A child rewrites a 40 MB checkpoint in a loop; SIGKILL lands mid-write. The file
    on disk is always the last complete checkpoint."""
    path = tmp_path / "checkpoint.pt"
    script = textwrap.dedent(
        f"""
        import torch
        from pyro_vae.train.checkpoint import save_checkpoint
        big = torch.randn(10_000_000, generator=torch.Generator().manual_seed(0))
        i = 0
        while True:
            save_checkpoint({str(path)!r}, {{"counter": i, "big": big + i}})
            if i == 0:
                print("saved", flush=True)
            i += 1
        """
    )
    base = torch.randn(10_000_000, generator=torch.Generator().manual_seed(0))
    torn = 0
    for trial in range(10):  # each kill lands mid-write with p ~ 0.7; stop after two did
        if torn >= 2:
            break
        delay = 0.3 + 0.07 * trial
        proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"saved\n"  # this child has written once
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        torn += any(p.suffix == ".tmp" for p in tmp_path.iterdir())
        state = load_checkpoint(path)
        assert torch.equal(state["big"], base + state["counter"])  # complete and consistent
        for p in tmp_path.glob("*.tmp"):
            p.unlink()
    assert torn >= 2  # kills really interrupted writes


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_pickle_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": FORMAT, "version": VERSION, "payload": _Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(run_dir, tmp_path):
    data = (run_dir / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_refuses_other_data_and_changes_nothing(tmp_path, capsys):
    data = tmp_path / "table.pt"
    x = torch.rand(120, 6, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x}, data)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "file", "--data-file", str(data), "--likelihood", "normal"]
    small = ["--hidden-dims", "8", "--latent-dim", "2", "--batch-size", "16", "--no-progress"]
    assert main([*argv, *small, "--epochs", "1", "--out", str(out)]) == 0
    before = _snapshot(out)
    torch.save({"x": x + 1.0}, data)  # same path, other content
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 2
    assert "sha256" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--seed", "1", "--no-progress"]) == 2
    assert "--seed 1 does not match" in capsys.readouterr().err
    assert _snapshot(out) == before
    # the table gets rows and per-feature histograms instead of image grids
    assert {"samples.npz", "samples.csv", "samples_histograms.png"} <= set(before)


def test_out_holding_a_run_is_refused_and_overwrite_moves_it_aside(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out) == 0
    before = _snapshot(out)
    assert train(out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert train(out, "--overwrite") == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and _snapshot(moved[0]) == before


def test_compile_option_reaches_fit_and_survives_resume(tmp_path, monkeypatch):
    import pyro_vae.runs.execute as execute

    real_fit, seen = execute.fit, []

    def recording_fit(*args, **kwargs):
        seen.append(kwargs["compile"])
        return real_fit(*args, **{**kwargs, "compile": False})  # compiling takes minutes

    monkeypatch.setattr(execute, "fit", recording_fit)
    out = tmp_path / "run"
    assert train(out, "--compile") == 0
    assert json.loads((out / "config.json").read_text())["compile"] is True
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert train(tmp_path / "plain") == 0
    assert seen == [True, True, False]  # the saved option is kept on resume; off by default

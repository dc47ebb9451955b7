"""A run is never lost, overwritten or silently corrupted: each cause found by the
adversarial review, through the command line where a user meets it. A refused command
exits 2 with one line naming the fix and changes nothing on disk."""

from __future__ import annotations

import contextlib
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
from hypothesis import given
from hypothesis import strategies as st

from pyro_vae.cli import main
from pyro_vae.runs import RunConfig

TINY = ["--hidden-dims", "16", "--latent-dim", "3", "--batch-size", "64", "--no-progress"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def strict_json(text: str):
    def reject(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    assert main(["train", "--epochs", "1", *TINY, "--out", str(out)]) == 0
    return out


def test_a_refused_option_changes_nothing_in_an_existing_run(finished_run, capsys):
    before = snapshot(finished_run)
    for argv in (
        ["train", "--lr", "-1", "--out", str(finished_run)],
        ["train", "--epochs", "1", "--out", str(finished_run)],
        ["semisupervised", "--lr", "-1", "--out", str(finished_run)],
        ["train", "--resume", str(finished_run), "--latent-dim", "7"],
    ):
        assert main([*argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("pyro-vae: error:") and "Traceback" not in err
    assert snapshot(finished_run) == before


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.array(["a", "b", "c"])}, "not numbers"),
        ({"x": np.array(3.0)}, "single number"),
        ({"x": np.random.default_rng(0).random((40, 3)), "y": np.eye(3)[np.arange(40) % 3]}, None),
    ],
    ids=["strings", "0-d", "one-hot-y"],
)
def test_bad_data_files_exit_2(tmp_path, capsys, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "file", "--data-file", str(path), "--likelihood", "normal"]
    extra = ["--conditional"] if message is None else []
    assert main([*argv, *extra, "--epochs", "1", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (message or "y.argmax(1)") in err
    assert not out.exists()


def test_a_pt_file_whose_x_is_a_dict(tmp_path, capsys):
    path = tmp_path / "d.pt"
    torch.save({"x": {"a": torch.zeros(3)}}, path)
    argv = ["train", "--dataset", "file", "--data-file", str(path), "--out", str(tmp_path / "r")]
    assert main([*argv, "--epochs", "1", *TINY]) == 2
    assert "must be an array" in capsys.readouterr().err


def test_float64_npy_is_accepted_as_float32(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.random.default_rng(0).random((60, 4)))  # NumPy's default dtype
    out = tmp_path / "run"
    argv = ["train", "--dataset", "file", "--data-file", str(path), "--likelihood", "normal"]
    assert main([*argv, "--epochs", "1", *TINY, "--batch-size", "16", "--out", str(out)]) == 0
    assert strict_json((out / "test.json").read_text())["epochs"] == 1


def test_a_stray_label_is_refused_before_a_huge_model(tmp_path, capsys):
    path = tmp_path / "d.pt"
    y = torch.tensor([0, 1] * 30)
    y[-1] = 299_999
    torch.save({"x": torch.rand(60, 4), "y": y}, path)
    argv = ["train", "--dataset", "file", "--data-file", str(path), "--likelihood", "normal"]
    assert main([*argv, "--conditional", "--epochs", "1", *TINY, "--out", str(tmp_path / "r")]) == 2
    assert "relabel the classes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_epochs_0_on_a_new_run_is_refused(tmp_path, capsys):
    assert main(["train", "--epochs", "0", *TINY, "--out", str(tmp_path / "r")]) == 2
    assert "--epochs 0 trains nothing" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_evaluation_json_is_strict_json_with_k_1(finished_run, capsys):
    argv = ["evaluate", str(finished_run), "--num-samples", "1", "--num-examples", "20"]
    with pytest.warns(UserWarning, match="K=1"):
        assert main(argv) == 0
    report = strict_json((finished_run / "evaluation.json").read_text())
    assert report["nll_stderr"] is None and np.isfinite(report["nll"])
    assert "± n/a" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["evaluate", "sample", "ppc"])
def test_devices_are_checked_on_every_command(finished_run, capsys, command):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # CI and the dev machines have none
    assert main([command, str(finished_run), "--device", "cuda"]) == 2
    assert "use --device cpu" in capsys.readouterr().err


def test_m2_runs_are_read_by_evaluate_and_sample(tmp_path, capsys):
    out = tmp_path / "m2"
    argv = ["semisupervised", "--labels", "100", "--epochs", "1", "--hidden-dims", "16"]
    assert main([*argv, "--latent-dim", "3", "--out", str(out), "--no-progress"]) == 0
    assert main(["evaluate", str(out), "--num-samples", "5", "--num-examples", "20"]) == 0
    assert np.isfinite(strict_json((out / "evaluation.json").read_text())["nll"])
    assert main(["sample", str(out), "--num-samples", "8"]) == 0
    # M2 observes its labels: they are kept when it samples, so it draws a row per label
    assert (out / "samples_by_label.png").exists()


@given(
    st.one_of(
        st.lists(st.integers()),
        st.dictionaries(
            st.sampled_from(["prior", "latent_dim", "hidden_dims", "seed", "lr", "model", "x"]),
            st.one_of(
                st.none(), st.integers(), st.floats(), st.text(max_size=5), st.lists(st.integers())
            ),
        ),
    )
)
def test_fuzzed_config_json_gives_value_errors_only(data):
    with contextlib.suppress(ValueError):  # anything else (TypeError, KeyError) fails
        RunConfig.from_dict(data, source="config.json").validate()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: [c], "JSON object"),
        (lambda c: {k: v for k, v in c.items() if k != "likelihood"}, "lacks likelihood"),
        (lambda c: {**c, "latent_dim": "three"}, "'latent_dim' must be int"),
        (lambda c: {**c, "prior": "nonesuch"}, "Unknown prior 'nonesuch'"),
        (lambda c: {**c, "surprise": 1}, "unknown key 'surprise'"),
    ],
    ids=["list", "missing", "type", "part", "unknown-key"],
)
def test_damaged_config_json_exits_2_naming_the_key(finished_run, tmp_path, capsys, edit, message):
    damaged = tmp_path / "run"
    damaged.mkdir()
    for name in ("checkpoint.pt", "config.json"):
        (damaged / name).write_bytes((finished_run / name).read_bytes())
    config = json.loads((finished_run / "config.json").read_text())
    (damaged / "config.json").write_text(json.dumps(edit(config)))
    before = snapshot(damaged)
    for argv in (["evaluate", str(damaged)], ["train", "--resume", str(damaged), "--no-progress"]):
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert snapshot(damaged) == before


def _python(code: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        **kw,
    )


def test_a_second_writer_is_refused_with_the_pid_of_the_first(tmp_path, capsys):
    out = tmp_path / "run"
    first = _python(
        f"""
        import sys
        from pyro_vae.cli import main
        sys.exit(main(["train", "--epochs", "200", *{TINY!r}, "--out", {str(out)!r}]))
        """
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert main(["train", "--epochs", "1", *TINY, "--out", str(out), "--overwrite"]) == 2
        assert f"process {first.pid}" in capsys.readouterr().err
        assert main(["train", "--resume", str(out), "--no-progress"]) == 2
        assert f"process {first.pid}" in capsys.readouterr().err
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    # the first writer stopped cleanly; its run resumes
    assert first.returncode == 130
    lines = (out / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines]
    assert epochs == list(range(1, len(epochs) + 1))
    argv = ["train", "--resume", str(out), "--epochs", str(len(epochs) + 1), "--no-progress"]
    assert main(argv) == 0


def test_disk_full_during_training_exits_2_with_the_resume_command(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", *TINY, "--out", str(out)]) == 0
    checkpoint = (out / "checkpoint.pt").read_bytes()
    limit = 64 * 1024  # smaller than a checkpoint of this model
    child = _python(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        from pyro_vae.cli import main
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        sys.exit(main(["train", "--resume", {str(out)!r}, "--epochs", "3", "--no-progress"]))
        """
    )
    output = child.communicate(timeout=300)[0].decode()
    assert child.returncode == 2, output
    assert "Traceback" not in output and "file size limit" in output
    assert f"--resume {out}" in output
    assert (out / "checkpoint.pt").read_bytes() == checkpoint  # the last good one survives
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_nan_inside_a_custom_dataset_is_named_as_a_data_problem():
    from torch.utils.data import Dataset

    from pyro_vae import VAE, DiagonalNormalGuide, NormalLikelihood, StandardNormalPrior, fit

    class Table(Dataset):
        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int) -> torch.Tensor:
            x = torch.full((5,), 0.5)
            if i == 17:
                x[2] = float("nan")
            return x

    vae = VAE(
        StandardNormalPrior(2),
        NormalLikelihood.mlp(2, (5,), (8,), scale=1.0),
        DiagonalNormalGuide.mlp((5,), 2, (8,)),
    )
    with pytest.raises(ValueError, match="the data, not the learning rate"):
        fit(vae.model, vae.guide, Table(), epochs=1, batch_size=8, progress=False)


def test_elbo_terms_names_a_bad_batch_size():
    from pyro_vae import VAE, DiagonalNormalGuide, NormalLikelihood, StandardNormalPrior
    from pyro_vae.check.evaluate import elbo_terms

    vae = VAE(
        StandardNormalPrior(2),
        NormalLikelihood.mlp(2, (5,), (8,), scale=1.0),
        DiagonalNormalGuide.mlp((5,), 2, (8,)),
    )
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        elbo_terms(vae.model, vae.guide, torch.rand(10, 5), batch_size=0)

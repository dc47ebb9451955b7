"""Run directories: refusals write nothing, overwrite keeps the old run, one writer at a
time (two real processes), a full disk is a clean error, JSON is always strict JSON, the
metrics file follows the checkpoint, and resuming on other data is refused."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pyro_vae import rundir
from pyro_vae.rundir import (
    NonFiniteWarning,
    RunDirectory,
    RunWriteError,
    bundled_data_files,
    check_fingerprint,
    data_fingerprint,
    dumps_json,
    json_safe,
)

MODULE_FILE = Path(rundir.__file__).resolve()

# The children load rundir.py by file path: it imports only the standard library, so a
# child starts in a fraction of a second instead of importing torch and pyro.
CHILD_PRELUDE = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("rundir", {str(MODULE_FILE)!r})
rundir = importlib.util.module_from_spec(spec)
sys.modules["rundir"] = rundir
spec.loader.exec_module(rundir)
"""


def strict_loads(text: str) -> Any:
    """``json.loads`` that rejects NaN / Infinity / -Infinity instead of accepting them."""

    def reject(name: str) -> Any:
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=reject)


def snapshot(root: Path, *, dirs: bool = True) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: (bytes, mtime_ns) for files, mtime_ns for directories."""
    out: dict[str, tuple[Any, ...]] = {}
    if dirs:
        out["."] = ("dir", root.stat().st_mtime_ns)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath) / name
            if dirs:
                out[str(p.relative_to(root))] = ("dir", p.stat().st_mtime_ns)
        for name in filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def make_run(path: Path, *, checkpoint: bool = True) -> Path:
    """A finished-looking run directory with old mtimes (so any rewrite would show)."""
    (path / "figures").mkdir(parents=True)
    (path / "config.json").write_text('{"latent_dim": 3, "seed": 0}\n')
    if checkpoint:
        (path / "checkpoint.pt").write_bytes(b"\x80\x02fake-checkpoint" * 10)
    (path / "metrics.jsonl").write_text('{"epoch": 1, "val_elbo": -100.5}\n')
    (path / "test.json").write_text('{"elbo": -99.0}\n')
    (path / "figures" / "samples.png").write_bytes(bytes(range(256)))
    past = time.time() - 3600
    for p in [*path.rglob("*"), path]:
        os.utime(p, (past, past))
    return path


def temporaries(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if ".tmp" in n)


# --------------------------------------------------------------------------- opening


def test_new_refuses_a_non_empty_directory_and_changes_nothing(tmp_path):
    run = make_run(tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(ValueError) as info:
        RunDirectory.open(run, "new")
    message = str(info.value)
    assert f"--resume {run}" in message and "--overwrite" in message
    assert "config.json" in message  # says what is there
    assert snapshot(run) == before
    assert not (run / ".lock").exists()


def test_resume_and_read_refuse_a_directory_without_checkpoint_and_change_nothing(tmp_path):
    run = make_run(tmp_path / "run", checkpoint=False)
    before = snapshot(run)
    for mode in ("resume", "read"):
        with pytest.raises(ValueError, match=r"no checkpoint\.pt") as info:
            RunDirectory.open(run, mode)
        assert "config.json" not in str(info.value)  # only what is missing is named
    assert snapshot(run) == before
    (run / "config.json").unlink()
    with pytest.raises(ValueError, match=r"no config\.json and no checkpoint\.pt"):
        RunDirectory.open(run, "resume")
    with pytest.raises(ValueError, match="does not exist"):
        RunDirectory.open(tmp_path / "missing", "resume")
    assert not (tmp_path / "missing").exists()


def test_new_run_that_is_refused_before_start_leaves_nothing_behind(tmp_path):
    out = tmp_path / "runs" / "a"
    with pytest.raises(ValueError, match="bad option"), RunDirectory.open(out, "new") as run:
        assert out.is_dir() and (out / ".lock").is_file()  # locked before anything else
        with pytest.raises(RuntimeError, match=r"before RunDirectory\.start"):
            run.append_metrics({"epoch": 1})
        raise ValueError("bad option")  # the caller's validation fails
    assert not (tmp_path / "runs").exists()


def test_new_run_writes_config_and_empty_metrics_on_start_and_removes_the_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # an existing empty directory is fine
    with RunDirectory.open(out, "new") as run:
        assert os.listdir(out) == [".lock"]
        run.start({"latent_dim": 3, "lr": 1e-3})
        run.append_metrics({"epoch": 1, "val_elbo": -90.25})
    assert sorted(os.listdir(out)) == ["config.json", "metrics.jsonl"]
    assert strict_loads((out / "config.json").read_text()) == {"latent_dim": 3, "lr": 1e-3}
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1, "val_elbo": -90.25}\n'


def test_overwrite_moves_the_old_run_aside_with_all_bytes_intact(tmp_path):
    out = make_run(tmp_path / "run")
    before = snapshot(out, dirs=False)
    with RunDirectory.open(out, "overwrite") as run:
        # Validation happens here: nothing is moved before start().
        assert snapshot(out, dirs=False) == {**before, ".lock": snapshot(out)[".lock"]}
        run.start({"latent_dim": 5})
        moved = run.moved_to
    assert moved is not None and moved.parent == tmp_path
    assert re.fullmatch(r"run\.old-\d{8}-\d{6}", moved.name)
    assert str(moved) in run.message
    assert snapshot(moved, dirs=False) == before  # bytes and mtimes, nothing added
    assert sorted(os.listdir(out)) == ["config.json", "metrics.jsonl"]
    assert strict_loads((out / "config.json").read_text()) == {"latent_dim": 5}

    # A second overwrite within the same second gets its own name; nothing is lost.
    again_before = snapshot(out, dirs=False)
    with RunDirectory.open(out, "overwrite") as run:
        run.start({"latent_dim": 7})
    assert run.moved_to != moved and snapshot(run.moved_to, dirs=False) == again_before
    assert snapshot(moved, dirs=False) == before


def test_overwrite_refused_before_start_moves_nothing(tmp_path):
    out = make_run(tmp_path / "run")
    before = snapshot(out, dirs=False)
    with pytest.raises(ValueError, match="bad data"), RunDirectory.open(out, "overwrite"):
        raise ValueError("bad data")
    assert snapshot(out, dirs=False) == before
    assert sorted(os.listdir(tmp_path)) == ["run"]


# --------------------------------------------------------------------------- locking


def _start_holder(out: Path, *, checkpoint: bool = False) -> subprocess.Popen:
    """A child process that opens ``out`` as a new run, starts it, says 'ready' and waits
    until its stdin closes (or it is killed)."""
    code = CHILD_PRELUDE + textwrap.dedent(
        f"""
        run = rundir.RunDirectory.open({str(out)!r}, "new")
        run.start({{"holder": True}})
        if {checkpoint!r}:
            with run.guard("checkpoint.pt"):
                rundir.atomic_write_bytes(run.checkpoint_path, b"checkpoint")
        print("ready", flush=True)
        sys.stdin.read()
        run.close()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        pytest.fail(f"the lock holder did not start: {child.communicate()[1]}")
    return child


def test_lock_second_writer_is_refused_naming_the_pid_of_another_process(tmp_path):
    out = tmp_path / "run"
    child = _start_holder(out)
    try:
        before = snapshot(out)
        for mode in ("new", "overwrite"):
            with pytest.raises(ValueError) as info:
                RunDirectory.open(out, mode)
            message = str(info.value)
            assert f"being written by process {child.pid}" in message
            assert "choose another --out" in message
        # The lock itself refuses too (when a writer got in between the check and the lock).
        with pytest.raises(ValueError, match=f"being written by process {child.pid}"):
            rundir._lock(out)
        assert snapshot(out) == before  # the refused opens wrote nothing
        assert RunDirectory.writer_pid(out) == child.pid
    finally:
        child.stdin.close()
        assert child.wait(timeout=30) == 0, child.stderr.read()
    assert RunDirectory.writer_pid(out) is None
    assert not (out / ".lock").exists()
    with RunDirectory.open(out, "overwrite") as run:  # free again
        run.start({"second": True})
    assert strict_loads((out / "config.json").read_text()) == {"second": True}


def test_lock_is_released_by_the_os_when_the_holder_is_killed(tmp_path):
    out = tmp_path / "run"
    child = _start_holder(out, checkpoint=True)
    with pytest.raises(ValueError, match=f"process {child.pid}"):
        RunDirectory.open(out, "resume")
    reader = RunDirectory.open(out, "read")  # reading needs no lock
    reader.write_json("evaluation.json", {"nll": 80.0})
    child.kill()  # SIGKILL: no cleanup runs in the child
    child.wait(timeout=30)
    child.stdin.close()
    child.stdout.close()
    child.stderr.close()
    assert (out / ".lock").read_text().split()[0] == str(child.pid)  # stale file is left
    assert RunDirectory.writer_pid(out) is None
    with RunDirectory.open(out, "resume") as run:
        assert (out / ".lock").read_text().split()[0] == str(os.getpid())
        run.start()  # keeps the saved config
    assert strict_loads((out / "config.json").read_text()) == {"holder": True}


# --------------------------------------------------------------------------- disk full


WRITERS = {
    "write_json": 'run.write_json("test.json", {"values": [0.123456789] * 2000})',
    "append_metrics": 'run.append_metrics({"epoch": 2, "pad": "x" * 5000})',
    "rewrite_metrics": 'run.rewrite_metrics([{"epoch": i, "pad": "y" * 50} for i in range(200)])',
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_file_size_limit_is_a_clean_error_with_the_resume_hint(tmp_path, writer):
    out = make_run(tmp_path / "run")
    before = snapshot(out, dirs=False)
    limit = 2048  # every existing file is smaller; every new write is larger
    assert all(len(v[0]) < limit for v in before.values())
    code = CHILD_PRELUDE + textwrap.dedent(
        f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        with rundir.RunDirectory.open({str(out)!r}, "resume") as run:
            run.start()
            resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
            try:
                {WRITERS[writer]}
            except rundir.RunWriteError as e:
                assert e.errno == 27, e.errno  # EFBIG
                print(e)
                sys.exit(3)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    message = proc.stdout
    assert "file size limit was hit" in message
    assert f"last good checkpoint is {out / 'checkpoint.pt'}" in message
    assert f"pyro-vae train --resume {out}" in message
    assert "Traceback" not in proc.stderr
    # Previous files intact: untouched, or (append_metrics) its partial line cut off again.
    after = snapshot(out, dirs=False)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == {
        k: v for k, v in before.items() if k != "metrics.jsonl"
    }
    assert temporaries(out) == []


def _disk_full(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_is_a_value_error_naming_the_fix(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with RunDirectory.open(out, "new") as run:
        run.start({"a": 1})
        run.write_json("test.json", {"elbo": -1.0})
        monkeypatch.setattr(rundir, "_write_all", _disk_full)
        with pytest.raises(RunWriteError) as info:
            run.write_json("test.json", {"elbo": -2.0})
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        assert "the disk is full" in message and "test.json" in message
        # no checkpoint yet: nothing to resume, start again instead
        assert "No checkpoint was saved yet" in message and f"--out {out} --overwrite" in message
        with pytest.raises(RunWriteError, match="the disk is full"):
            run.append_metrics({"epoch": 1})
        with pytest.raises(RunWriteError, match="the disk is full"), run.guard("checkpoint.pt"):
            _disk_full()
    assert strict_loads((out / "test.json").read_text()) == {"elbo": -1.0}
    assert (out / "metrics.jsonl").read_bytes() == b""
    assert temporaries(out) == []

    (out / "checkpoint.pt").write_bytes(b"ckpt")
    run = RunDirectory.open(out, "read")  # evaluate: the run itself is not at stake
    with pytest.raises(RunWriteError, match="run itself is unchanged"):
        run.write_json("evaluation.json", {"nll": 1.0})
    assert not (out / "evaluation.json").exists()


def test_atomic_path_replaces_only_on_success(tmp_path):
    out = make_run(tmp_path / "run")
    old = (out / "test.json").read_bytes()
    run = RunDirectory.open(out, "read")
    with pytest.raises(RuntimeError, match="boom"), run.atomic_path("test.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert (out / "test.json").read_bytes() == old and temporaries(out) == []
    with run.atomic_path("samples.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == out  # savefig infers the format
        tmp.write_bytes(b"png")
    assert (out / "samples.png").read_bytes() == b"png" and temporaries(out) == []


# --------------------------------------------------------------------------- JSON


def test_non_finite_numbers_become_null_with_a_warning_naming_key_and_cause(tmp_path):
    out = make_run(tmp_path / "run")
    run = RunDirectory.open(out, "read")
    report = {
        "nll": np.float64(85.5),
        "nll_stderr": float("inf"),
        "per_class": {"3": np.float32("nan"), "4": 1.0},
        "kl": [1.0, torch.tensor(float("-inf")), np.array([2.0, np.nan])],
        "count": np.int64(10),
    }
    reasons = {"nll_stderr": "K=1 importance sample has no standard error"}
    with pytest.warns(NonFiniteWarning) as record:
        run.write_json("evaluation.json", report, reasons=reasons)
    # only ours: another library may warn while the test runs
    messages = [str(w.message) for w in record if issubclass(w.category, NonFiniteWarning)]
    assert any(
        "nll_stderr is inf" in m and "K=1 importance sample has no standard error" in m
        for m in messages
    )
    assert any("per_class.3 is nan" in m for m in messages)
    assert any("kl[1] is -inf" in m for m in messages)
    assert any("kl[2][1] is nan" in m for m in messages)
    assert all(m.startswith("evaluation.json:") for m in messages)
    text = (out / "evaluation.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert strict_loads(text) == {
        "nll": 85.5,
        "nll_stderr": None,
        "per_class": {"3": None, "4": 1.0},
        "kl": [1.0, None, [2.0, None]],
        "count": 10,
    }


def test_many_non_finite_values_under_one_key_give_one_warning():
    history = [{"epoch": i, "val_elbo": float("nan")} for i in range(50)]
    with pytest.warns(NonFiniteWarning) as record:
        text = dumps_json({"history": history}, where="x.json")
    assert len(record) == 1
    assert "history[*].val_elbo is non-finite in 50 places" in str(record[0].message)
    assert all(r["val_elbo"] is None for r in strict_loads(text)["history"])


def test_finite_data_writes_no_warning_and_rejects_non_json_types():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert strict_loads(dumps_json({"a": [1, 2.5, None, True, "s"], 3: -0.0})) == {
            "a": [1, 2.5, None, True, "s"],
            "3": -0.0,
        }
    with pytest.raises(TypeError, match=r"a\.b is a set"):
        dumps_json({"a": {"b": {1, 2}}})
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="contains itself"):
        dumps_json(cyclic)


def test_append_metrics_writes_strict_json_lines(tmp_path):
    with RunDirectory.open(tmp_path / "run", "new") as run:
        run.start({})
        with pytest.warns(NonFiniteWarning, match="val_elbo is nan"):
            run.append_metrics({"epoch": 1, "val_elbo": torch.tensor(float("nan"))})
        run.append_metrics({"epoch": 2, "val_elbo": -80.0})
        lines = run.metrics_path.read_text().splitlines()
    assert [strict_loads(line) for line in lines] == [
        {"epoch": 1, "val_elbo": None},
        {"epoch": 2, "val_elbo": -80.0},
    ]


def test_rewrite_metrics_makes_the_file_equal_to_the_checkpoint_history(tmp_path):
    out = make_run(tmp_path / "run")
    # A crash left lines the checkpoint never saw and half a line.
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "val_elbo": -95.0}\n{"epoch": 3, "val_e')
    history = [
        {"epoch": 1, "step": 10, "train_elbo": -110.25, "val_elbo": -100.5, "time": 0.1},
        {"epoch": 2, "step": 20, "train_elbo": -101.0, "val_elbo": -96.125, "time": 0.3},
    ]
    with RunDirectory.open(out, "resume") as run:
        run.start()
        run.rewrite_metrics(history)
        assert run.read_metrics() == history
        lines = run.metrics_path.read_text().splitlines()
        assert lines == [json.dumps(r) for r in history]  # line for line
        run.append_metrics({"epoch": 3, "val_elbo": -93.0})
        assert run.read_metrics() == [*history, {"epoch": 3, "val_elbo": -93.0}]
    assert temporaries(out) == []


def test_resume_start_removes_temporaries_of_a_killed_writer(tmp_path):
    out = make_run(tmp_path / "run")
    (out / ".test.json.tmp-abcd1234.json").write_text("{")
    (out / "checkpoint.pt.k3j4h5g6.tmp").write_bytes(b"half")
    with RunDirectory.open(out, "resume") as run:
        assert temporaries(out) != []  # open alone writes nothing
        run.start()
    assert temporaries(out) == []
    assert (out / "checkpoint.pt").is_file()


# hypothesis: nested dicts/lists of floats including nan/inf, numpy and torch scalars
_floats = st.floats(allow_nan=True, allow_infinity=True)
_leaves = st.one_of(
    _floats,
    _floats.map(np.float64),
    st.floats(width=32, allow_nan=True, allow_infinity=True).map(np.float32),
    _floats.map(lambda v: torch.tensor(v, dtype=torch.float64)),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
)
_trees = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=4), children, max_size=4),
    ),
    max_leaves=25,
)


def _reference(obj: Any, path: str, bad: list[str]) -> Any:
    """The expected JSON value, collecting the paths of non-finite numbers into ``bad``."""
    if isinstance(obj, torch.Tensor):
        obj = obj.item()
    if isinstance(obj, (np.floating, float)) and not isinstance(obj, bool):
        value = float(obj)
        if math.isfinite(value):
            return value
        bad.append(path)
        return None
    if isinstance(obj, dict):
        return {k: _reference(v, f"{path}.{k}" if path else k, bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_reference(v, f"{path}[{i}]", bad) for i, v in enumerate(obj)]
    return obj


@given(_trees)
def test_fuzz_sanitised_json_is_strict_and_keeps_every_finite_value(obj):
    bad: list[str] = []
    expected = _reference(obj, "", bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = dumps_json(obj, indent=None)
    assert strict_loads(text) == expected
    _, replaced = json_safe(obj)
    assert [r.path for r in replaced] == bad
    assert all(r.value in ("nan", "inf", "-inf") for r in replaced)
    assert any(issubclass(w.category, NonFiniteWarning) for w in caught) == bool(bad)


# --------------------------------------------------------------------------- fingerprints


def _fingerprint(path: Path, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "dataset": "file",
        "split_sizes": {"train": 320, "valid": 40, "test": 40},
        "split_seed": 0,
        "binarize": "dynamic",
    }
    return data_fingerprint(path, **{**args, **overrides})


def test_fingerprint_hash_follows_the_bytes_and_a_mismatch_names_the_field(tmp_path):
    data = tmp_path / "small.pt"
    data.write_bytes(bytes(range(256)) * 100)
    saved = json.loads(json.dumps(_fingerprint(data)))  # as stored in config.json
    assert saved["files"][0]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    check_fingerprint(saved, _fingerprint(data))  # same data: no error

    moved = tmp_path / "moved.pt"
    moved.write_bytes(data.read_bytes())
    check_fingerprint(saved, _fingerprint(moved))  # same content elsewhere is the same data

    with pytest.raises(ValueError) as info:
        check_fingerprint(saved, _fingerprint(data, split_seed=3))
    message = str(info.value)
    assert "split_seed: the run used 0, now 3" in message
    assert "--seed 0" in message and "--out" in message and "files" not in message

    changed = bytearray(data.read_bytes())
    changed[1234] ^= 1
    data.write_bytes(bytes(changed))
    current = _fingerprint(data, binarize="static")
    assert current["files"][0]["sha256"] != saved["files"][0]["sha256"]
    with pytest.raises(ValueError) as info:
        check_fingerprint(saved, current)
    message = str(info.value)
    assert "files (content)" in message and "binarize" in message
    assert f"--data-file {data.resolve()}" in message and "--binarize dynamic" in message
    assert "split_seed" not in message


def test_fingerprint_of_the_bundled_data_and_of_a_directory(tmp_path):
    files = bundled_data_files()
    fp = data_fingerprint(files, dataset="bundled", split_seed=None, binarize="dynamic")
    assert [f["sha256"] for f in fp["files"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    ]
    assert fp["files"][0]["bytes"] > 1 << 20  # streamed over several chunks
    strict_loads(json.dumps(fp))

    folder = tmp_path / "mnist"
    (folder / "raw").mkdir(parents=True)
    (folder / "raw" / "a.gz").write_bytes(b"aaaa")
    before = data_fingerprint(folder, dataset="mnist")
    (folder / "raw" / "a.gz").write_bytes(b"aaab")
    with pytest.raises(ValueError, match=r"files \(content\)"):
        check_fingerprint(before, data_fingerprint(folder, dataset="mnist"))
    with pytest.raises(ValueError, match="does not exist"):
        data_fingerprint(tmp_path / "nope.pt")

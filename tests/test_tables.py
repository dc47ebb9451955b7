"""Tables through ``--dataset file``: feature names from ``.npz``/``.pt``/``.csv``, the
standardisation of the normal likelihood (training split only, outputs in the data's
units), the learned scale that is the default on tables, and the refusals that name the
fix before anything is written."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.data import (
    DIGITS_FEATURES,
    Standardization,
    TableDataset,
    load_digits,
    load_tensor_file,
)
from pyro_vae.parts.likelihoods import NormalLikelihood, PoissonLikelihood
from pyro_vae.runs import RunConfig, load_run, load_splits
from pyro_vae.runs.build import StandardizedInput, resolve_from_data

SMALL = ["--epochs", "2", "--hidden-dims", "16", "--latent-dim", "2", "--batch-size", "64"]
SMALL += ["--no-progress"]
NAMES = ["height_mm", "mass_t", "rate", "constant"]


def table(n: int = 300, seed: int = 0) -> np.ndarray:
    """Four features on very different scales, one of them constant."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return np.stack(
        [1000 + 50 * a + rng.normal(0, 5, n), 0.01 * a, rng.gamma(2.0, 3.0, n), np.full(n, 7.0)],
        axis=1,
    )


def write_csv(path: Path, x: np.ndarray, header: list[str] | None, fmt: str = "{:.6f}") -> Path:
    lines = [",".join(header)] if header is not None else []
    lines += [",".join(fmt.format(v) for v in row) for row in x]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- files


def test_csv_header_is_detected_and_values_typed(tmp_path):
    x = table(20)
    named = load_tensor_file(write_csv(tmp_path / "a.csv", x, NAMES))
    assert isinstance(named, TableDataset) and named.feature_names == tuple(NAMES)
    assert named.tensors[0].dtype == torch.float32
    torch.testing.assert_close(named.tensors[0], torch.tensor(x, dtype=torch.float32))
    plain = load_tensor_file(write_csv(tmp_path / "b.csv", x, None))
    assert plain.feature_names is None and plain.tensors[0].shape == (20, 4)
    counts = np.arange(12).reshape(4, 3)
    ints = load_tensor_file(write_csv(tmp_path / "c.csv", counts, ["a", "b", "c"], "{:d}"))
    assert ints.tensors[0].dtype == torch.int64 and ints.tensors[0].tolist() == counts.tolist()
    # one value with a decimal point makes the whole table real-valued
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4.0\n")
    assert load_tensor_file(tmp_path / "d.csv").tensors[0].dtype == torch.float32
    # a header made of numbers only is data (documented): name columns with a letter
    (tmp_path / "e.csv").write_text("1990,1991\n1,2\n")
    e = load_tensor_file(tmp_path / "e.csv")
    assert e.feature_names is None and e.tensors[0].tolist() == [[1990, 1991], [1, 2]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n3\n", r"line 3: 1 fields where the first line has 2"),
        ("a,b\n1,2\n3,x\n", r"line 3, column 2: 'x' is not a number"),
        ("a,b\n1,2\n3,nan\n", r"line 3, column 2: 'nan' is not a finite number"),
        ("a,a\n1,2\n", r"'a' occurs twice"),
        ("a,b\n", r"header but no rows"),
        ("", r"holds no rows"),
    ],
)
def test_csv_errors_name_the_line_and_the_fix(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_tensor_file(tmp_path / "bad.csv")


def test_feature_names_from_npz_and_pt_files(tmp_path):
    x = table(10).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, feature_names=np.array(NAMES))
    assert load_tensor_file(tmp_path / "t.npz").feature_names == tuple(NAMES)
    torch.save({"x": torch.from_numpy(x), "feature_names": NAMES}, tmp_path / "t.pt")
    assert load_tensor_file(tmp_path / "t.pt").feature_names == tuple(NAMES)
    np.savez(tmp_path / "short.npz", x=x, feature_names=np.array(NAMES[:3]))
    with pytest.raises(ValueError, match="3 feature names for 4 columns"):
        load_tensor_file(tmp_path / "short.npz")
    np.savez(tmp_path / "img.npz", x=np.zeros((5, 2, 2)), feature_names=np.array(NAMES))
    with pytest.raises(ValueError, match=r"store x as an \(N, D\) array"):
        load_tensor_file(tmp_path / "img.npz")
    np.savez(tmp_path / "comma.npz", x=x, feature_names=np.array(["a", "b,c", "d", "e"]))
    with pytest.raises(ValueError, match="comma"):
        load_tensor_file(tmp_path / "comma.npz")


def test_the_digits_and_their_splits_carry_the_feature_names(tmp_path):
    digits = load_digits()
    assert all(ds.feature_names == DIGITS_FEATURES for ds in digits.values())
    assert DIGITS_FEATURES[:3] == ("r0c0", "r0c1", "r0c2") and len(DIGITS_FEATURES) == 64
    path = write_csv(tmp_path / "t.csv", table(50), NAMES)
    splits = load_splits(RunConfig(dataset="file", data_file=str(path)))
    assert {k: len(v) for k, v in splits.items()} == {"valid": 5, "test": 5, "train": 40}
    assert all(ds.feature_names == tuple(NAMES) for ds in splits.values())


# --------------------------------------------------------------------------- standardisation


def test_standardization_is_fitted_on_the_training_rows_and_inverts():
    x = torch.tensor(table(100), dtype=torch.float32)
    st = Standardization.fit(x)
    torch.testing.assert_close(st.loc, x.double().mean(0).float())
    expected_scale = x.double().std(0, correction=0).float()
    expected_scale[3] = 1.0  # the constant feature is only shifted
    torch.testing.assert_close(st.scale, expected_scale)
    u = st(x)
    torch.testing.assert_close(u[:, :3].mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(u[:, :3].std(0, correction=0), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(st.inverse(u), x, rtol=1e-5, atol=1e-3)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        Standardization.fit(bad)


def test_standardised_normal_density_is_that_of_the_data_in_their_units():
    """p(x|z) = N(x; m + s f(z), s sigma) = N((x - m)/s; f(z), sigma) / prod s."""
    x = torch.tensor(table(8), dtype=torch.float32)
    st = Standardization.fit(x)
    lik = NormalLikelihood.mlp(2, (4,), (8,), scale=0.7)
    z = torch.randn(8, 2)
    plain = lik.dist(z).log_prob(st(x))
    lik.standardize(st)
    d = lik.dist(z)
    expected = torch.distributions.Normal(st.inverse(lik(z)), st.scale * 0.7).log_prob(x).sum(-1)
    torch.testing.assert_close(d.log_prob(x), expected)
    torch.testing.assert_close(d.log_prob(x), plain - st.scale.log().sum(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(d.mean, st.inverse(lik(z)))  # means in the data's units


def test_a_learned_scale_has_a_floor():
    lik = NormalLikelihood.mlp(2, (3,), (8,), scale=1.0, learn_scale=True, min_scale=0.01)
    lik.scale = torch.full((3,), 1e-6)  # the learned value after a collapse
    assert lik.dist(torch.zeros(1, 2)).base_dist.scale.min().item() == pytest.approx(0.01)
    fixed = NormalLikelihood.mlp(2, (3,), (8,), scale=1e-4)  # a fixed scale is the user's
    assert fixed.dist(torch.zeros(1, 2)).base_dist.scale.min().item() == pytest.approx(1e-4)


def test_normal_defaults_depend_on_whether_the_data_are_images(bundled):
    image = RunConfig(likelihood="normal")
    resolve_from_data(image, bundled["valid"])
    assert image.standardize is False and "learn_scale" not in image.options
    assert image.resolved_options() == {"scale": 0.1, "learn_scale": False}
    rows = TableDataset(torch.tensor(table(40), dtype=torch.float32), feature_names=NAMES)
    learned = resolve_from_data(RunConfig(likelihood="normal"), rows)
    assert learned.standardize is True and learned.feature_names == NAMES
    assert learned.resolved_options() == {"scale": 1.0, "learn_scale": True}
    fixed = resolve_from_data(RunConfig(likelihood="normal", options={"scale": 0.3}), rows)
    assert fixed.resolved_options() == {"scale": 0.3, "learn_scale": False}
    start = resolve_from_data(RunConfig(likelihood="normal", options={"learn_scale": True}), rows)
    assert start.resolved_options() == {"scale": 1.0, "learn_scale": True}
    off = resolve_from_data(RunConfig(likelihood="normal", standardize=False), rows)
    assert off.standardize is False and off.data_loc is None
    counts = resolve_from_data(RunConfig(likelihood="poisson"), rows)
    assert counts.standardize is False and counts.data_loc is None


def check_named_rows(stem: Path, num_rows: int) -> None:
    """``STEM.csv`` and ``STEM.npz`` hold ``num_rows`` generated rows of :func:`table`'s
    features under their names, in the data's units (the first column near 1000)."""
    lines = stem.with_suffix(".csv").read_text().splitlines()
    assert lines[0].split(",") == NAMES and len(lines) == 1 + num_rows
    values = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    saved = np.load(stem.with_suffix(".npz"))
    assert saved["feature_names"].tolist() == NAMES
    np.testing.assert_allclose(saved["x"], values, rtol=1e-6)
    assert abs(values[:, 0].mean() - 1000) < 3 * 50


def test_a_table_with_a_header_trains_standardised_from_the_cli(tmp_path, capsys):
    x = table(300)
    path = write_csv(tmp_path / "t.csv", x, NAMES)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "file", "--data-file", str(path), "--likelihood", "normal"]
    assert main([*argv, *SMALL, "--out", str(out)]) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["feature_names"] == NAMES and config["standardize"] is True
    assert config["learn_scale"] is True and config["scale"] == 1.0
    run = load_run(out)
    train = run.split("train").tensors[0]
    st = Standardization.fit(train)  # the training split alone
    torch.testing.assert_close(torch.tensor(config["data_loc"]), st.loc)
    torch.testing.assert_close(torch.tensor(config["data_scale"]), st.scale)
    assert not torch.allclose(st.loc, torch.tensor(x, dtype=torch.float32).mean(0))
    assert isinstance(run.module.posterior.encoder, StandardizedInput)
    torch.testing.assert_close(run.module.likelihood.standardization.loc, st.loc)
    # generated rows come out in the data's units
    pyro.set_rng_seed(0)
    generated = run.module.model(num_samples=500)
    assert abs(generated[:, 0].mean() - 1000) < 3 * 50 and generated[:, 0].std() > 10
    assert generated[:, 1].abs().max() < 1.0
    trace = pyro.poutine.trace(run.module.model).get_trace(num_samples=500)
    means = trace.nodes["x"]["fn"].mean
    assert (means[:, 3] - 7).abs().max() < 1.0  # the constant column: means near 7
    test = json.loads((out / "test.json").read_text())
    assert math.isfinite(test["test_elbo"])
    # generated rows are written under the features' names, in the data's units
    check_named_rows(out / "samples", 30)  # one row per test example, at most 64
    assert main(["sample", str(out), "--num-samples", "40"]) == 0
    check_named_rows(out / "samples", 40)
    assert main(["ppc", str(out), "--num-samples", "10", "--num-examples", "30"]) == 0
    header = (out / "ppc_features.csv").read_text().splitlines()[0].split(",")
    assert header[1] == "feature_name" and header[2] == "mean_observed"
    rows = [line.split(",") for line in (out / "ppc_features.csv").read_text().splitlines()[1:]]
    assert [r[1] for r in rows] == NAMES
    # resume keeps the statistics; the saved config round-trips
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0
    again = RunConfig.read(out / "config.json")
    assert again.data_loc == config["data_loc"] and again.feature_names == NAMES
    assert RunConfig.from_dict(again.to_dict()).to_dict() == again.to_dict()
    # --config FILE on other data takes the settings, not the statistics or the names
    other = write_csv(tmp_path / "other.csv", table(100, seed=1) * 2, None)
    out2 = tmp_path / "other"
    flags = ["--config", str(out / "config.json"), "--data-file", str(other)]
    assert main(["train", *flags, "--epochs", "1", "--no-progress", "--out", str(out2)]) == 0
    second = json.loads((out2 / "config.json").read_text())
    assert second["feature_names"] is None and second["data_loc"] != config["data_loc"]


def test_no_standardize_and_a_fixed_scale_from_the_cli(tmp_path):
    path = write_csv(tmp_path / "t.csv", table(200), NAMES)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "file", "--data-file", str(path), "--likelihood", "normal"]
    argv += ["--no-standardize", "--scale", "5"]
    assert main([*argv, *SMALL, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["standardize"] is False and config["data_loc"] is None
    assert config["learn_scale"] is False and config["scale"] == 5.0
    module = load_run(out).module
    assert not isinstance(module.posterior.encoder, StandardizedInput)
    assert module.likelihood.standardization is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--likelihood", "poisson", "--standardize"], "drop --standardize"),
        (["--likelihood", "normal", "--standardize", "--levels", "2"], "use --levels 1"),
        (["--likelihood", "normal"], "For counts choose a count likelihood"),
        (["--likelihood", "bernoulli"], r"x.float\(\)"),
    ],
)
def test_refusals_name_the_fix_and_write_nothing(tmp_path, capsys, flags, message):
    path = write_csv(tmp_path / "counts.csv", np.arange(300).reshape(100, 3) % 7, None, "{:d}")
    argv = ["train", "--dataset", "file", "--data-file", str(path), *flags, *SMALL]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_integer_tables_train_with_a_count_likelihood(tmp_path):
    path = write_csv(tmp_path / "counts.csv", np.arange(300).reshape(100, 3) % 7, None, "{:d}")
    argv = ["train", "--dataset", "file", "--data-file", str(path), "--likelihood", "poisson"]
    assert main([*argv, *SMALL, "--out", str(tmp_path / "run")]) == 0
    PoissonLikelihood.mlp(2, (3,), (4,)).check_data(load_tensor_file(path).tensors[0])


def test_configs_without_the_new_fields_still_load():
    """A config.json written before --standardize existed: the run was not standardised."""
    data = RunConfig(likelihood="normal", x_shape=[4]).to_dict()
    for key in ("standardize", "feature_names", "data_loc", "data_scale", "library_percentiles"):
        del data[key]
    config = RunConfig.from_dict(data)
    assert config.standardize is False and config.feature_names is None
    with pytest.raises(ValueError, match="data_loc and data_scale"):
        RunConfig(likelihood="normal", data_loc=[0.0], x_shape=[1]).validate()
    with pytest.raises(ValueError, match="101 non-decreasing percentiles"):
        RunConfig(likelihood="poisson", library_percentiles=[1.0, 2.0]).validate()
    with pytest.raises(ValueError, match="semi-supervised model"):
        RunConfig(
            model="m2", labels=10, likelihood="poisson", options={"library_size": True}
        ).validate()


def test_library_size_refuses_a_table_with_an_empty_row_before_writing(tmp_path, capsys):
    counts = np.arange(300).reshape(100, 3) % 7
    counts[:10] = 0  # ten examples without a single count: no composition to model
    path = write_csv(tmp_path / "counts.csv", counts, ["a", "b", "c"], "{:d}")
    argv = ["train", "--dataset", "file", "--data-file", str(path), "--likelihood", "zinb"]
    argv += ["--library-size", *SMALL, "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "library size 0" in err and "Drop the empty rows" in err
    assert not (tmp_path / "run").exists()

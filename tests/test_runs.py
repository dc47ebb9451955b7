"""Runs from Python: RunConfig declares, validates and round-trips every option; load_run
gives back the model, guide, config and history of a run the CLI trained."""

from __future__ import annotations

import json

import pytest

from pyro_vae.cli import main
from pyro_vae.runs import RunConfig, build_model, evaluate_run, load_run

TINY = ["--hidden-dims", "16", "--latent-dim", "3", "--batch-size", "128", "--no-progress"]


def test_run_config_round_trips_through_json():
    config = RunConfig(prior="mog", options={"components": 4}, hidden_dims=[32, 16], lr=3e-4)
    config.resolve_binarize().validate()
    text = json.dumps(config.to_dict())
    again = RunConfig.from_dict(json.loads(text))
    assert again == config
    assert again.to_dict() == config.to_dict()
    assert config.to_dict()["components"] == 4  # part options are flat in config.json


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prior": "nonesuch"}, "Unknown prior 'nonesuch'; choose one of: normal"),
        ({"components": 0}, "--components must be an integer >= 1"),
        ({"scale": 0.5}, "--scale has no effect with this model; it is read by: likelihood normal"),
        ({"prior": "sphere"}, "--prior sphere cannot be paired with --guide diagonal"),
        ({"hidden_dims": []}, "--hidden-dims needs at least one width"),
        ({"objective": "iwae", "beta": 0.5}, "IWAE objective cannot be combined with beta"),
    ],
)
def test_validation_names_the_option(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig().replace(**changes).resolve_binarize().validate()


def test_python_builds_the_model_the_cli_builds(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--prior", "vamp", "--components", "3", "--guide", "fullcov"]
    assert main([*argv, "--epochs", "1", *TINY, "--out", str(out)]) == 0
    run = load_run(out)
    rebuilt = build_model(RunConfig.read(out / "config.json"))
    assert [k for k in rebuilt.state_dict()] == [k for k in run.module.state_dict()]
    assert run.config.prior == "vamp" and run.config.options == {"components": 3}
    assert [r["epoch"] for r in run.history] == [1] and run.epoch == 1
    report = evaluate_run(run, num_samples=10, num_examples=50)
    assert report["num_examples"] == 50
    # the IS estimate of -log p(x) is below the negative ELBO (up to Monte Carlo noise)
    assert report["nll"] < -report["elbo"] + 1.0


def test_train_config_file_reruns_a_saved_configuration(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    argv = ["train", "--prior", "learned", "--epochs", "1", *TINY]
    assert main([*argv, "--out", str(first)]) == 0
    config = first / "config.json"
    assert main(["train", "--config", str(config), "--seed", "1", "--out", str(second)]) == 0
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, second))
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"seed", "out", "data_fingerprint"}  # the split seed is in the fingerprint
    assert b["seed"] == 1 and b["prior"] == "learned" and b["latent_dim"] == 3

"""Runs: a typed configuration, the model it builds, training it into a run directory,
and loading, evaluating and checking a finished run from Python.

The command line is a thin layer over this package::

    from pyro_vae.runs import load_run, evaluate_run
    run = load_run("runs/example")
    report = evaluate_run(run, num_samples=1000)
"""

from pyro_vae.runs.build import Run, build_model, load_run, load_splits, prepare
from pyro_vae.runs.checks import evaluate_run, ppc_run, run_data, sample_run
from pyro_vae.runs.config import DATASETS, MODEL_FIELDS, RunConfig
from pyro_vae.runs.execute import resume_config, train_run

__all__ = [
    "DATASETS",
    "MODEL_FIELDS",
    "Run",
    "RunConfig",
    "build_model",
    "evaluate_run",
    "load_run",
    "load_splits",
    "ppc_run",
    "prepare",
    "resume_config",
    "run_data",
    "sample_run",
    "train_run",
]

"""Command line: ``pyro-vae semisupervised``, the M2 model trained with few labels.

Like :mod:`pyro_vae.cli.main`, this module only turns strings into objects; the model and the
training loop live in :mod:`pyro_vae.models.semisupervised`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from pyro_vae import data as data_mod
from pyro_vae.cli.main import _num_classes, check_counts, load_splits, prepare
from pyro_vae.models.semisupervised import (
    SemiSupervisedVAE,
    classification_accuracy,
    fit_semisupervised,
    split_labelled,
)
from pyro_vae.train.checkpoint import load_checkpoint, load_module_states, save_checkpoint
from pyro_vae.train.loop import _writable_dir

MODEL_NAME = "model.pt"
LABELLED_DATASETS = ("bundled", "mnist", "fashion-mnist")


def add_parser(sub: Any) -> None:
    """Register the ``semisupervised`` command."""
    s = sub.add_parser(
        "semisupervised",
        help="train the semi-supervised M2 model with a few labels",
        description="Train M2 (Kingma et al., 2014) on a labelled dataset of which only "
        "--labels examples (the same number per class) keep their labels. Writes "
        "config.json, model.pt (after every epoch), metrics.jsonl and test.json with the "
        "test accuracy of q(y|x).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument(
        "--dataset",
        choices=LABELLED_DATASETS,
        default="bundled",
        help="bundled: MNIST-10k shipped with the package; mnist / fashion-mnist: IDX files "
        "in --data-dir (train 50k, valid 10k, test 10k)",
    )
    s.add_argument("--data-dir", default=None, help="folder holding the IDX files")
    s.add_argument("--download", action="store_true", help="fetch the files (torchvision)")
    s.add_argument("--labels", type=int, default=100, help="labelled examples (per class equal)")
    s.add_argument("--epochs", type=int, default=50, help="passes over the unlabelled data")
    s.add_argument("--time-budget", type=float, default=None, help="stop after S seconds")
    s.add_argument("--batch-size", type=int, default=200)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--aux-weight", type=float, default=50.0, help="alpha of the class loss")
    s.add_argument("--latent-dim", type=int, default=50)
    s.add_argument("--hidden-dims", type=int, nargs="+", default=[500])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="run directory (default runs/m2-<time>)")
    s.add_argument("--no-progress", action="store_true", help="no per-epoch lines")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config = {k: v for k, v in vars(args).items() if k != "command"}
    config["binarize"] = "dynamic"
    if config["out"] is None:
        config["out"] = str(Path("runs") / f"m2-{time.strftime('%Y%m%d-%H%M%S')}")
    if config["time_budget"] is not None and not config["time_budget"] > 0:
        raise ValueError(f"--time-budget must be > 0 seconds, got {config['time_budget']}.")
    check_counts({name: config[name] for name in ("epochs", "batch_size", "latent_dim")})
    if any(h < 1 for h in config["hidden_dims"]):
        raise ValueError(f"--hidden-dims must all be >= 1, got {config['hidden_dims']}.")
    return config


def build_m2(config: dict[str, Any]) -> SemiSupervisedVAE:
    """The M2 model of a ``semisupervised`` run's config."""
    return SemiSupervisedVAE.mlp(
        config["num_classes"],
        config["latent_dim"],
        config["x_shape"],
        hidden_dims=config["hidden_dims"],
    )


def load_m2(run_dir: str | Path) -> tuple[SemiSupervisedVAE, dict[str, Any]]:
    """Rebuild the M2 model of a run directory and load its weights."""
    config = json.loads((Path(run_dir) / "config.json").read_text())
    m2 = build_m2(config)
    load_module_states([m2], load_checkpoint(Path(run_dir) / MODEL_NAME)["modules"])
    return m2, config


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``pyro-vae semisupervised``; returns the test metrics."""
    started = time.perf_counter()
    config = _config(args)
    # dynamic binarization of the training batches, valid and test binarized once, as for
    # pyro-vae train
    train_ds, transform, valid, test = prepare(load_splits(config), config)
    x_train, y_train = train_ds.tensors
    data_mod.binarize(x_train[:1000])  # names integer, NaN or out-of-range training data
    config["num_classes"] = _num_classes(train_ds)
    config["x_shape"] = list(x_train.shape[1:])
    labelled, unlabelled = split_labelled(
        x_train, y_train, config["labels"], config["num_classes"], seed=config["seed"]
    )
    x_valid, y_valid = valid.tensors
    x_test, y_test = test.tensors
    run_dir = _writable_dir(Path(config["out"]))
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(config["seed"])
    m2 = build_m2(config)
    metrics_file = run_dir / "metrics.jsonl"
    metrics_file.write_text("")
    print(
        f"Training M2 on {config['dataset']}: {labelled[0].shape[0]} labelled / "
        f"{unlabelled.shape[0]} unlabelled / {x_valid.shape[0]} valid / {x_test.shape[0]} "
        f"test, run directory {run_dir}"
    )

    def log(record: dict[str, float]) -> None:
        save_checkpoint(run_dir / MODEL_NAME, {"modules": [m2.state_dict()], "record": record})
        with metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if not config["no_progress"]:
            print(
                f"epoch {record['epoch']}: loss {record['loss']:.2f}, val accuracy "
                f"{record['val_accuracy']:.4f}, {record['seconds']:.1f} s"
            )

    history = fit_semisupervised(
        m2,
        labelled,
        unlabelled,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        lr=config["lr"],
        aux_weight=config["aux_weight"],
        transform=transform,
        validation_data=(x_valid, y_valid),
        seed=config["seed"],
        max_seconds=config["time_budget"],
        log=log,
    )
    metrics = {
        "test_accuracy": classification_accuracy(m2, x_test, y_test),
        "val_accuracy": history.records[-1]["val_accuracy"],
        "labels": config["labels"],
        "num_test": int(x_test.shape[0]),
        "epochs": len(history),
        "wall_seconds": time.perf_counter() - started,
    }
    (run_dir / "test.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} with {config['labels']} labels "
        f"({metrics['epochs']} epochs, {metrics['wall_seconds']:.0f} s); wrote {run_dir}"
    )
    return metrics

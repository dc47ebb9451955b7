"""``pyro-vae semisupervised``: the M2 model of Kingma et al. (2014) trained with a few
labels, as a run of the same format as ``pyro-vae train`` (checkpoints, ``--resume``,
Ctrl-C and NaN handling)."""

from __future__ import annotations

import argparse
from typing import Any

from pyro_vae.cli.train import add_run_arguments, config_from_args, option_adder
from pyro_vae.runs import RunConfig, train_run
from pyro_vae.train.batches import LABELLED_SCHEDULES

LABELLED_DATASETS = ("bundled", "mnist", "fashion-mnist")
#: M2 as in Pyro's SS-VAE example: 500 hidden units, latent 50, batches of 200
DEFAULTS = RunConfig(
    model="m2", labels=100, latent_dim=50, hidden_dims=[500], batch_size=200, epochs=50
)


def add_parser(sub: Any) -> None:
    """Register the ``semisupervised`` command."""
    s = sub.add_parser(
        "semisupervised",
        help="train the semi-supervised M2 model with a few labels",
        description="Train M2 (Kingma et al., 2014) on a labelled dataset of which only "
        "--labels examples (the same number per class) keep their labels. Writes the run "
        "directory of pyro-vae train; test.json holds the test accuracy of q(y|x).",
    )

    opt = option_adder(s)
    d = DEFAULTS
    opt(
        "--dataset",
        choices=LABELLED_DATASETS,
        default=d.dataset,
        help="bundled: MNIST-10k shipped with the package; mnist / fashion-mnist: IDX files "
        "in --data-dir (train 50k, valid 10k, test 10k)",
    )
    opt("--data-dir", default=None, help="folder holding the IDX files")
    opt("--download", action="store_true", help="fetch the files (torchvision)")
    opt("--labels", type=int, default=d.labels, help="labelled examples (per class equal)")
    opt("--aux-weight", type=float, default=d.aux_weight, help="alpha of the class loss")
    opt(
        "--labelled-schedule",
        choices=LABELLED_SCHEDULES,
        default=d.labelled_schedule,
        help="paired: every step takes an unlabelled and a labelled batch; interleaved: "
        "Pyro's SS-VAE example, a labelled batch every floor(N / labels) steps, each label "
        "once per epoch",
    )
    opt("--latent-dim", type=int, default=d.latent_dim, help="dimension of z")
    opt("--hidden-dims", type=int, nargs="+", default=d.hidden_dims, help="hidden widths")
    add_run_arguments(s, opt, d)
    s.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``pyro-vae semisupervised``; the exit status."""
    config = config_from_args(args, base=DEFAULTS)
    if config.model != "m2":
        raise ValueError(f"{args.resume} is not a semi-supervised run; resume it with train.")
    metrics = train_run(
        config,
        resume=getattr(args, "resume", None) is not None,
        overwrite=getattr(args, "overwrite", False),
        progress=not args.no_progress,
    )
    return 130 if metrics is None else 0

"""``pyro-vae train``: parse the options into a :class:`~pyro_vae.runs.RunConfig` and run it.

The part choices, their help and the part options (``--components``, ``--scale``, ...)
are read from the registry of parts, so a new part appears here without an edit.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pyro_vae.objectives import OBJECTIVES
from pyro_vae.parts import part_options, registered
from pyro_vae.parts.registry import option_users
from pyro_vae.runs import DATASETS, RunConfig, resume_config, train_run
from pyro_vae.runs.config import BINARIZATIONS, DERIVED_FIELDS, NETWORKS
from pyro_vae.train.schedule import SCHEDULES
from pyro_vae.train.tracking import INSTALL, TRACKERS

DEFAULTS = RunConfig()


def _parts_help(kind: str, what: str) -> str:
    parts = registered(kind)
    return f"{what}: " + "; ".join(f"{name}: {cls.summary}" for name, cls in parts.items())


def option_adder(p: argparse.ArgumentParser) -> Callable[..., None]:
    """``opt(*flags, default=..., **kw)`` for parser ``p``: the default is shown in the
    help but left out of the namespace (``SUPPRESS``), so that the options the user gave
    can be told from the defaults."""

    def opt(*names: str, default: Any = None, **kw: Any) -> None:
        if kw.get("help") and kw.get("action") != "store_true":
            kw["help"] += f" (default: {default})"
        p.add_argument(*names, default=argparse.SUPPRESS, **kw)

    return opt


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a run (see :func:`option_adder`)."""
    opt = option_adder(p)
    d = DEFAULTS
    opt(
        "--config",
        default=None,
        metavar="FILE",
        help="read the options from a config.json; flags given as well override it",
    )
    opt(
        "--dataset",
        choices=DATASETS,
        default=d.dataset,
        help="bundled: MNIST-10k shipped with the package (offline); digits: the UCI digits, "
        "64 counts 0..16 per example, shipped with the package; mnist / fashion-mnist: "
        "IDX files in --data-dir; binarized-mnist: Larochelle's .amat files; file: --data-file",
    )
    opt("--data-dir", default=None, help="folder holding the dataset files")
    opt(
        "--data-file",
        default=None,
        help="data for --dataset file: .npy, .npz (x, optional y and feature_names), .pt, or "
        ".csv (one example per line; the first line is a header of feature names when one "
        "of its fields is not a number; whole numbers without a decimal point are read as "
        "integer counts)",
    )
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help="standardise each feature with the mean and standard deviation of the training "
        "split, the networks of the normal likelihood working in those units; its density, "
        "samples and outputs stay in the data's units (default: on for --likelihood normal "
        "on data that are not images, off otherwise)",
    )
    opt(
        "--download",
        action="store_true",
        help="download MNIST / Fashion-MNIST with torchvision if missing",
    )
    opt(
        "--binarize",
        choices=BINARIZATIONS,
        default="dynamic for bernoulli on grayscale, else none",
        help="binarization of the data",
    )
    opt(
        "--likelihood",
        choices=list(registered("likelihood")),
        default=d.likelihood,
        help=_parts_help("likelihood", "p(x|z)"),
    )
    opt(
        "--prior",
        choices=list(registered("prior")),
        default=d.prior,
        help=_parts_help("prior", "p(z)"),
    )
    opt(
        "--guide",
        choices=list(registered("guide")),
        default=d.guide,
        help=_parts_help("guide", "q(z|x)"),
    )
    for option in part_options().values():
        used_by = ", ".join(option_users(option.name))
        if option.type is bool:
            opt(option.flag, action="store_true", help=f"{option.help} [{used_by}]")
        else:
            opt(
                option.flag,
                type=option.type,
                default=option.default,
                help=f"{option.help} [{used_by}]",
            )
    opt(
        "--network",
        choices=NETWORKS,
        default=d.network,
        help="encoder/decoder networks (gated: MLP with gated hidden layers)",
    )
    opt("--latent-dim", type=int, default=d.latent_dim, help="dimension of z")
    opt(
        "--hidden-dims",
        type=int,
        nargs="+",
        default=d.hidden_dims,
        help="hidden widths of the MLP encoder (the decoder mirrors them)",
    )
    opt(
        "--conditional",
        action="store_true",
        help="conditional VAE on the dataset's labels: p(z|y), p(x|z,y), q(z|x,y)",
    )
    opt(
        "--levels",
        type=int,
        choices=(1, 2),
        default=d.levels,
        help="2: the hierarchical VAE p(z2) p(z1|z2) p(x|z1) with the guide q(z2|x) "
        "q(z1|x,z2); --prior and --guide are those of the top level z2",
    )
    opt(
        "--objective",
        choices=sorted(OBJECTIVES),
        default=d.objective,
        help="elbo: Trace_ELBO (Monte Carlo KL); meanfield: TraceMeanField_ELBO (analytic "
        "KL); iwae: importance weighted bound with --num-particles K",
    )
    opt(
        "--num-particles",
        type=int,
        default=d.num_particles,
        help="samples of z per example (K of iwae)",
    )
    opt("--beta", type=float, default=d.beta, help="KL weight (beta-VAE); not with iwae")
    opt(
        "--warmup-steps",
        type=int,
        default=d.warmup_steps,
        help="linear KL warm-up from 1e-3 to --beta over this many steps; not with iwae",
    )
    opt(
        "--free-bits",
        type=float,
        default=d.free_bits,
        help="per-dimension KL floor in nats (batch-averaged KL); 0: off; not with iwae",
    )
    opt(
        "--score-function",
        action="store_true",
        help="score-function gradients for the guide (TraceGraph_ELBO); --objective elbo only",
    )
    add_run_arguments(p, opt, d)


def add_run_arguments(p: argparse.ArgumentParser, opt: Any, d: RunConfig) -> None:
    """Options of the run itself, shared by ``train`` and ``semisupervised``."""
    opt("--epochs", type=int, default=d.epochs, help="total number of epochs")
    opt("--batch-size", type=int, default=d.batch_size, help="examples per step")
    opt("--lr", type=float, default=d.lr, help="Adam learning rate (applied on --resume too)")
    opt("--adam-beta1", type=float, default=d.adam_beta1, help="Adam's beta_1, in [0, 1)")
    opt(
        "--lr-schedule",
        choices=SCHEDULES,
        default=None,
        help="learning-rate schedule, stepped once per epoch: step (times --lr-gamma every "
        "--lr-step-size epochs), cosine (from --lr to 0 over --epochs), plateau (times "
        "--lr-gamma after --lr-patience epochs without a better validation ELBO)",
    )
    opt("--lr-step-size", type=int, default=d.lr_step_size, help="epochs between step decays")
    opt("--lr-gamma", type=float, default=d.lr_gamma, help="decay factor of step and plateau")
    opt(
        "--lr-patience",
        type=int,
        default=d.lr_patience,
        help="epochs without a better validation ELBO before plateau decays",
    )
    opt(
        "--patience",
        type=int,
        default=None,
        help="early stopping: stop after this many epochs without a better validation ELBO, "
        "and keep the parameters of the best epoch",
    )
    opt(
        "--min-delta",
        type=float,
        default=d.min_delta,
        help="early stopping: the least rise of the validation ELBO (nats) that counts",
    )
    opt(
        "--clip-grad-norm",
        type=float,
        default=None,
        help="clip the gradient of all parameters together to this norm (the loss sums over "
        "the batch, so the norm grows with --batch-size); each epoch records the mean norm "
        "before clipping as grad_norm",
    )
    opt(
        "--compile",
        action="store_true",
        help="compile the captured training step with TorchInductor (fused kernels): "
        "compiling takes seconds to minutes per batch shape, which long runs earn back; a "
        "graph that fails to compile or gives another loss runs uncompiled, with a warning",
    )
    opt(
        "--log",
        choices=TRACKERS,
        nargs="+",
        action="extend",
        default="none",
        help="also log to TensorBoard (RUN_DIR/tensorboard) and/or MLflow (--mlflow-uri); "
        f"needs the tracking extra: {INSTALL}",
    )
    opt(
        "--mlflow-uri",
        default="RUN_DIR/mlruns",
        help="MLflow tracking URI or folder for --log mlflow (no server needed for a folder)",
    )
    opt(
        "--time-budget",
        type=float,
        default=None,
        help="stop after the first epoch that ends past this many seconds",
    )
    opt("--device", default=d.device, help="cpu, cuda, cuda:1, ...")
    opt("--seed", type=int, default=d.seed, help="random seed (also of the data split)")
    opt("--out", default="runs/<model>-<dataset>-<time>", help="run directory")
    opt(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (its saved options are reused; give --epochs to "
        "train longer)",
    )
    opt(
        "--overwrite",
        action="store_true",
        help="replace a finished run in --out (the old one is moved aside, not deleted)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_parser(sub: Any) -> None:
    """Register the ``train`` command."""
    p = sub.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a VAE by SVI. Writes config.json, checkpoint.pt, metrics.jsonl, "
        "test.json and the sample and reconstruction figures to the run directory.",
    )
    add_arguments(p)
    p.set_defaults(run=run)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user typed, as RunConfig fields and part options."""
    skip = {"command", "run", "no_progress", "config", "resume", "overwrite"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """The run configuration: ``--resume``'s saved one, else ``--config FILE`` or the
    defaults (``base``), with the options given on the command line applied."""
    given = given_options(args)
    if getattr(args, "resume", None) is not None:
        return resume_config(args.resume, given)
    config = base or RunConfig()
    if getattr(args, "config", None) is not None:
        derived = dict.fromkeys(DERIVED_FIELDS)  # filled again from this run's data
        config = RunConfig.read(args.config, partial=True).replace(out=None, **derived)
    return config.replace(**given)


def run(args: argparse.Namespace) -> int:
    """Run ``pyro-vae train``; the exit status."""
    config = config_from_args(args)
    resume = getattr(args, "resume", None) is not None
    metrics = train_run(
        config,
        resume=resume,
        overwrite=getattr(args, "overwrite", False),
        progress=not args.no_progress,
    )
    return 130 if metrics is None else 0

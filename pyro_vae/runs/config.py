"""``RunConfig``: every option of a run, declared once, validated before anything is written.

A run configuration round-trips through ``config.json`` (:meth:`RunConfig.to_dict`,
:meth:`RunConfig.from_dict`). Part options (``--components``, ``--scale``, ...) are not
fields here: each part declares its own (:class:`~pyro_vae.parts.registry.Option`), and
they live in :attr:`RunConfig.options`, flattened into ``config.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_vae._checks import check_count, check_number
from pyro_vae.objectives import OBJECTIVES, make_objective
from pyro_vae.parts import get_part, part_options
from pyro_vae.parts.registry import option_users
from pyro_vae.train.batches import LABELLED_SCHEDULES
from pyro_vae.train.schedule import SCHEDULES, lr_scheduler
from pyro_vae.train.tracking import TRACKERS

__all__ = ["DATASETS", "DERIVED_FIELDS", "MODEL_FIELDS", "RunConfig"]

DATASETS = ("bundled", "digits", "mnist", "fashion-mnist", "binarized-mnist", "file")
NETWORKS = ("mlp", "gated", "conv")
BINARIZATIONS = ("dynamic", "static", "none")
MODELS = ("vae", "m2")
#: fields that define the model and its data; a resumed run must keep them
MODEL_FIELDS = (
    "model",
    "dataset",
    "data_file",
    "likelihood",
    "binarize",
    "network",
    "latent_dim",
    "hidden_dims",
    "prior",
    "guide",
    "conditional",
    "levels",
    "labels",
    "seed",
    "standardize",
)
#: fields filled from the training data when a run starts (:func:`pyro_vae.runs.build.prepare`);
#: a new run (``--config FILE``) fills them again from its own data
DERIVED_FIELDS = (
    "x_shape",
    "num_classes",
    "feature_names",
    "data_loc",
    "data_scale",
    "library_percentiles",
)


@dataclass
class RunConfig:
    """The options of one run of ``pyro-vae train`` (or ``semisupervised``).

    Defaults are those of ``pyro-vae train``. Derived fields (``x_shape``,
    ``num_classes``) are filled from the data when the run starts.
    """

    # what is trained
    model: str = "vae"
    # data
    dataset: str = "bundled"
    data_dir: str | None = None
    data_file: str | None = None
    download: bool = False
    binarize: str | None = None
    #: standardise each feature with the training split's mean and standard deviation, the
    #: networks of the normal likelihood working in those units and its density, means and
    #: draws in the data's units (:meth:`NormalLikelihood.standardize`); ``None``: on for
    #: the normal likelihood on data that are not images (resolved from the data)
    standardize: bool | None = None
    # parts
    likelihood: str = "bernoulli"
    network: str = "mlp"
    latent_dim: int = 20
    hidden_dims: list[int] = field(default_factory=lambda: [400])
    prior: str = "normal"
    guide: str = "diagonal"
    conditional: bool = False
    #: 1: one latent z; 2: the hierarchical VAE p(z2) p(z1|z2) p(x|z1) (the prior and the
    #: guide are then those of the top level z2)
    levels: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    # objective
    objective: str = "elbo"
    num_particles: int = 1
    beta: float = 1.0
    warmup_steps: int = 0
    free_bits: float = 0.0
    score_function: bool = False
    # semi-supervised (model "m2")
    labels: int | None = None
    aux_weight: float = 50.0
    #: how labelled and unlabelled batches mix (``pyro_vae.train.batches.LABELLED_SCHEDULES``)
    labelled_schedule: str = "paired"
    time_budget: float | None = None
    # run
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    #: Adam's first decay rate beta_1 (the second stays 0.999)
    adam_beta1: float = 0.9
    device: str = "cpu"
    seed: int = 0
    out: str | None = None
    # learning-rate schedule, early stopping, clipping (pyro_vae.train.schedule)
    lr_schedule: str | None = None
    lr_step_size: int = 10
    lr_gamma: float = 0.1
    lr_patience: int = 5
    patience: int | None = None
    min_delta: float = 0.0
    clip_grad_norm: float | None = None
    #: compile the captured training step with TorchInductor (``fit(compile=True)``)
    compile: bool = False
    # logging to tracking tools (pyro_vae.train.tracking)
    log: list[str] = field(default_factory=list)
    mlflow_uri: str | None = None
    # derived from the data
    x_shape: list[int] | None = None
    num_classes: int | None = None
    #: the names of the data's columns (from the data file or the dataset), or None
    feature_names: list[str] | None = None
    #: the per-feature mean and standard deviation of the training split (``--standardize``),
    #: flattened
    data_loc: list[float] | None = None
    data_scale: list[float] | None = None
    #: the 101 percentiles of the training split's library sizes (``--library-size``)
    library_percentiles: list[float] | None = None
    world_size: int | None = None
    #: what the run trains on (files and their sha256, split sizes and seed, binarization);
    #: a resumed run must find the same (:func:`pyro_vae.rundir.check_fingerprint`)
    data_fingerprint: dict[str, Any] | None = None

    # ------------------------------------------------------------------ round trip

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-able dict: the fields, with the part options at the top level."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        options = out.pop("options")
        out.update(self.resolved_options() if options is not None else {})
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config", partial: bool = False) -> RunConfig:
        """Parse a dict as written by :meth:`to_dict`.

        :param data: the parsed JSON.
        :param source: what to call it in error messages (e.g. the file's path).
        :param partial: allow missing fields (they take their defaults), as for
            ``pyro-vae train --config FILE``; otherwise every field a run wrote must be
            present.
        :raises ValueError: naming the key that is missing, unknown or of the wrong type.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(data).__name__}.")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)} - {"options"}
        known_options = part_options()
        values: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for key, value in data.items():
            if key in names:
                values[key] = _coerce(key, value, hints[key], source)
            elif key in known_options:
                option = known_options[key]
                options[key] = _coerce(key, value, option.type, source)
            elif key == "options" and isinstance(value, dict):
                for name, v in value.items():
                    if name not in known_options:
                        raise ValueError(f"{source}: unknown part option {name!r}.")
                    options[name] = _coerce(name, v, known_options[name].type, source)
            elif key in ("resume", "no_progress", "command", "config", "overwrite"):
                continue  # command-line actions, not options of the run
            else:
                raise ValueError(
                    f"{source} has an unknown key {key!r}; remove it (known keys: "
                    f"{', '.join(sorted(names | set(known_options)))})."
                )
        if not partial and "standardize" not in values:
            values["standardize"] = False  # written before the option existed: it was off
        if not partial:
            required = set(MODEL_FIELDS) - {"labels"}
            missing = sorted(k for k in required if k not in values)
            if missing:
                raise ValueError(
                    f"{source} lacks {', '.join(missing)}: it was not written by this "
                    "version of pyro-vae, or it was edited; restore the key(s)."
                )
        return cls(**values, options=options)

    @classmethod
    def read(cls, path: str | Path, *, partial: bool = False) -> RunConfig:
        """Read a ``config.json`` file (see :meth:`from_dict`)."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ValueError(f"{path} does not exist.") from None
        except OSError as e:
            raise ValueError(f"{path} cannot be read ({e.strerror}).") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path} is not valid JSON ({e}): the file is half-written or damaged."
            ) from None
        return cls.from_dict(data, source=str(path), partial=partial)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (part options by name go to ``options``)."""
        options = dict(self.options)
        fields = {f.name for f in dataclasses.fields(self)}
        for key in list(changes):
            if key not in fields:
                options[key] = changes.pop(key)
        return dataclasses.replace(self, **changes, options=options)

    # ------------------------------------------------------------------ validation

    def resolved_options(self) -> dict[str, Any]:
        """The options of this run's parts, each given value or its declared default."""
        used = {}
        for kind, name in (("prior", self.prior), ("likelihood", self.likelihood)):
            used.update({o.name: o for o in get_part(kind, name).options})
        used.update({o.name: o for o in get_part("guide", self.guide).options})
        return {name: self.options.get(name, o.default) for name, o in used.items()}

    def validate(self) -> RunConfig:
        """Check every field and every combination; return ``self``.

        :raises ValueError: naming the option and the fix, before anything is written.
        """
        _choice("model", self.model, MODELS)
        _choice("--dataset", self.dataset, DATASETS)
        _choice("--network", self.network, NETWORKS)
        if self.binarize is not None:
            _choice("--binarize", self.binarize, BINARIZATIONS)
        _choice("--objective", self.objective, tuple(OBJECTIVES))
        prior_cls = get_part("prior", self.prior)
        guide_cls = get_part("guide", self.guide)
        get_part("likelihood", self.likelihood)
        check_count("--latent-dim", self.latent_dim)
        if not self.hidden_dims:
            raise ValueError("--hidden-dims needs at least one width, e.g. --hidden-dims 400.")
        for h in self.hidden_dims:
            check_count("--hidden-dims (each width)", h)
        check_count("--epochs", self.epochs, minimum=0)
        check_count("--batch-size", self.batch_size)
        check_count("--num-particles", self.num_particles)
        check_number("--lr", self.lr, positive=True)
        check_number("--adam-beta1", self.adam_beta1, minimum=0)
        if not self.adam_beta1 < 1:
            raise ValueError(f"--adam-beta1 must be in [0, 1), got {self.adam_beta1}.")
        check_number("--seed", self.seed, integer=True, minimum=0)
        known = part_options()
        for name, value in self.options.items():
            if name not in known:
                raise ValueError(f"Unknown part option {name!r}.")
            known[name].check(value)
        for name in set(self.options) - set(self.resolved_options()):
            if self.options[name] != known[name].default:
                users = option_users(name)
                raise ValueError(
                    f"{known[name].flag} has no effect with this model; it is read by: "
                    f"{', '.join(users)}."
                )
        if self.levels not in (1, 2):
            raise ValueError(f"--levels must be 1 or 2, got {self.levels!r}.")
        if self.levels == 2 and (self.conditional or self.model != "vae"):
            raise ValueError(
                "--levels 2 builds the unconditional hierarchical VAE; drop --conditional."
            )
        if self.levels == 2 and self.network == "conv":
            raise ValueError("--levels 2 uses MLP networks; use --network mlp or gated.")
        if self.conditional:
            if self.prior != "normal" or self.network != "mlp":
                raise ValueError(
                    "--conditional uses its own learned class-conditional Gaussian prior and "
                    "MLP networks; drop --prior and use --network mlp."
                )
        else:
            prior_cls.check_guide(guide_cls)
        if self.model == "m2":
            if self.labels is None:
                raise ValueError("The semi-supervised model needs --labels N.")
            if self.network != "mlp":
                raise ValueError("The semi-supervised model uses MLP networks; use --network mlp.")
            check_count("--labels", self.labels)
            check_number("--aux-weight", self.aux_weight, minimum=0)
        if self.labelled_schedule not in LABELLED_SCHEDULES:
            raise ValueError(
                f"--labelled-schedule {self.labelled_schedule!r} is not one of "
                f"{', '.join(LABELLED_SCHEDULES)}."
            )
        if self.labelled_schedule != "paired" and self.model != "m2":
            raise ValueError(
                "--labelled-schedule applies to the semi-supervised model only (pyro-vae "
                "semisupervised); drop it."
            )
        if self.time_budget is not None:
            check_number("--time-budget", self.time_budget, positive=True)
        if self.dataset == "file" and not self.data_file:
            raise ValueError("--dataset file needs --data-file PATH (.npy, .npz, .pt or .csv).")
        self._validate_tables()
        self._validate_training_tools()
        self.make_objective()  # refuses combinations such as iwae with --beta
        return self

    def _validate_tables(self) -> None:
        """``--standardize``, ``--library-size`` and the fields derived from the data."""
        if self.standardize is not None and not isinstance(self.standardize, bool):
            raise ValueError(f"--standardize must be true or false, got {self.standardize!r}.")
        if self.standardize:
            if self.likelihood != "normal":
                raise ValueError(
                    f"--standardize rescales the data for the normal likelihood; the "
                    f"{self.likelihood} likelihood needs the data in their own units "
                    "(counts, values in [0, 1]): drop --standardize."
                )
            if self.model != "vae" or self.levels != 1:
                raise ValueError(
                    "--standardize works with the VAE of one latent level (q(z1|x,z2) and "
                    "M2's classifier read the data unstandardised): use --levels 1, or add "
                    "--no-standardize."
                )
        if self.resolved_options().get("library_size") and self.model != "vae":
            raise ValueError(
                "--library-size is for the VAE (pyro-vae train); the semi-supervised model "
                "does not pass the data to its likelihood: drop --library-size."
            )
        if self.feature_names is not None:
            if not all(isinstance(n, str) for n in self.feature_names):
                raise ValueError("feature_names must be a list of strings.")
            if self.x_shape is not None and [len(self.feature_names)] != list(self.x_shape):
                raise ValueError(
                    f"{len(self.feature_names)} feature names for data items of shape "
                    f"{self.x_shape}; remove feature_names or fix them."
                )
        if (self.data_loc is None) != (self.data_scale is None) or (
            self.data_loc is not None
            and self.data_scale is not None
            and len(self.data_loc) != len(self.data_scale)
        ):
            raise ValueError(
                "data_loc and data_scale (the standardisation) must be given together, one "
                "number per feature; remove both and they are computed from the data."
            )
        if self.data_scale is not None and not all(s > 0 for s in self.data_scale):
            raise ValueError("data_scale (the standardisation) must hold numbers > 0.")
        if self.library_percentiles is not None:
            values = self.library_percentiles
            if len(values) != 101 or any(b < a for a, b in itertools.pairwise(values)):
                raise ValueError(
                    "library_percentiles must be the 101 non-decreasing percentiles of the "
                    "training library sizes; remove them and they are computed from the data."
                )

    def _validate_training_tools(self) -> None:
        """The learning-rate schedule, early stopping, clipping and tracking options."""
        if self.lr_schedule is not None:
            _choice("--lr-schedule", self.lr_schedule, SCHEDULES)
        for flag, name, schedules in (
            ("--lr-step-size", "lr_step_size", ("step",)),
            ("--lr-gamma", "lr_gamma", ("step", "plateau")),
            ("--lr-patience", "lr_patience", ("plateau",)),
        ):
            if self.lr_schedule not in schedules and getattr(self, name) != _default(name):
                raise ValueError(
                    f"{flag} has no effect without --lr-schedule {' or '.join(schedules)}; "
                    "drop it or choose that schedule."
                )
        if self.lr_schedule is not None:
            lr_scheduler(  # checks the settings the schedule uses
                self.lr_schedule,
                epochs=self.epochs,
                step_size=self.lr_step_size,
                gamma=self.lr_gamma,
                patience=self.lr_patience,
            )
        if self.patience is not None:
            check_count("--patience", self.patience)
        check_number("--min-delta", self.min_delta, minimum=0)
        if self.patience is None and self.min_delta != _default("min_delta"):
            raise ValueError("--min-delta has no effect without --patience N; add --patience.")
        if self.model == "m2" and (self.patience is not None or self.lr_schedule == "plateau"):
            raise ValueError(
                "--patience and --lr-schedule plateau watch the validation ELBO, which the "
                "semi-supervised run does not compute; drop them (use --lr-schedule step or "
                "cosine)."
            )
        if self.clip_grad_norm is not None:
            check_number("--clip-grad-norm", self.clip_grad_norm, positive=True)
        for tool in self.log:
            _choice("--log", tool, TRACKERS)
        if self.mlflow_uri is not None and "mlflow" not in self.log:
            raise ValueError("--mlflow-uri has no effect without --log mlflow; add it.")

    def make_objective(self) -> Any:
        """The objective of this run (an :class:`~pyro.infer.ELBO`)."""
        return make_objective(
            self.objective,
            self.num_particles,
            beta=self.beta,
            warmup_steps=self.warmup_steps,
            free_bits=self.free_bits,
            score_function=self.score_function,
        )

    def resolve_binarize(self) -> RunConfig:
        """Fill ``binarize`` when it was not given: dynamic for the Bernoulli likelihood
        on grayscale data, none otherwise."""
        if self.binarize is None:
            grayscale = self.dataset not in ("binarized-mnist", "digits")
            self.binarize = "dynamic" if self.likelihood == "bernoulli" and grayscale else "none"
        return self


def _default(name: str) -> Any:
    """The default of a field of :class:`RunConfig`."""
    (f,) = [f for f in dataclasses.fields(RunConfig) if f.name == name]
    return f.default


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Check ``value`` against the field's type (``int | None``, ``list[int]``, ...)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        origin = typing.get_origin(kind)
        if origin is dict and isinstance(value, dict):
            return dict(value)
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(kind)
            if all(_is(v, item) for v in value):
                return list(value)
        elif origin is None and kind is not type(None) and _is(value, kind):
            return float(value) if kind is float else value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise ValueError(f"{source}: {key!r} must be {names}, got {value!r}.")


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is dict:
        return isinstance(value, dict)
    return isinstance(value, kind)

r"""The registry of parts: every prior, likelihood and guide class declares itself.

A part class sets ``part_name`` (its name on the command line and in ``config.json``), a
one-line ``summary``, the ``options`` it reads from a run configuration, and how it is
built from one (``from_config``). Defining the class registers it; nothing else has to be
edited. The CLI's choices and help, the README's parts table and the contract tests are
all read from here::

    from pyro_vae.parts import registered
    registered("prior")        # {"normal": StandardNormalPrior, "learned": ..., ...}

Compatibility facts are declared attributes of the classes, not string rules elsewhere:
``latent_space`` (``"euclidean"`` or ``"sphere"``) of priors and guides, ``mixable`` of
guides (whether a mixture of its posteriors is a distribution, as the VampPrior needs),
``discrete`` of likelihoods (whether :math:`-\log p(x)` is a code length, so bits per
dimension apply).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyro_vae._checks import check_number

__all__ = [
    "BuildSpec",
    "Option",
    "Part",
    "get_part",
    "part_options",
    "registered",
]

KINDS = ("prior", "likelihood", "guide")
_REGISTRY: dict[str, dict[str, type[Any]]] = {kind: {} for kind in KINDS}


@dataclass(frozen=True)
class Option:
    """An option a part reads from a run configuration (and the CLI flag ``--name``).

    :param name: the field name in ``config.json`` (``--name-with-dashes`` on the CLI).
    :param type: ``int``, ``float`` or ``bool``.
    :param default: the value when the option is not given.
    :param help: one line for ``--help``.
    :param minimum: the smallest allowed value of a number (inclusive), if any.
    :param positive: numbers must be ``> 0``.
    """

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    positive: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """Return ``value`` if it is valid for this option, else raise :class:`ValueError`
        naming the flag."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.flag} must be true or false, got {value!r}.")
            return value
        return check_number(
            self.flag,
            value,
            integer=self.type is int,
            minimum=self.minimum,
            positive=self.positive,
        )

    def same_as(self, other: Option) -> bool:
        return (self.type, self.default, self.minimum, self.positive) == (
            other.type,
            other.default,
            other.minimum,
            other.positive,
        )


@dataclass(frozen=True)
class BuildSpec:
    """What a part needs to build itself from a run configuration.

    :param x_shape: shape of one data item.
    :param latent_dim: dimension of the latent code.
    :param hidden_dims: hidden widths of the encoder, from the data inwards (decoders
        mirror them).
    :param network: ``"mlp"``, ``"gated"`` (gated MLP) or ``"conv"``.
    :param options: the part options (see :class:`Option`), by name.
    """

    x_shape: tuple[int, ...]
    latent_dim: int
    hidden_dims: tuple[int, ...] = (400,)
    network: str = "mlp"
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> Any:
        """The value of option ``name``, or its declared default."""
        if name in self.options:
            return self.options[name]
        return part_options()[name].default


class Part:
    """Mixin that registers a part class under ``(kind, part_name)`` when it is defined.

    Subclasses of the base classes :class:`~pyro_vae.parts.priors.Prior`,
    :class:`~pyro_vae.parts.likelihoods.Likelihood` and
    :class:`~pyro_vae.parts.guides.Guide` set ``part_name`` to register; base and helper
    classes leave it ``None``.
    """

    #: ``"prior"``, ``"likelihood"`` or ``"guide"``
    kind: ClassVar[str] = ""
    #: the name on the CLI and in ``config.json``; ``None`` for unregistered classes
    part_name: ClassVar[str | None] = None
    #: one line for ``--help`` and the README's parts table
    summary: ClassVar[str] = ""
    #: options read from the run configuration
    options: ClassVar[tuple[Option, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("part_name")
        if not name:
            return
        if cls.kind not in _REGISTRY:
            raise TypeError(f"{cls.__name__}.kind must be one of {KINDS}, got {cls.kind!r}.")
        known = _REGISTRY[cls.kind].get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(
                f"Two {cls.kind} parts are named {name!r}: {known.__qualname__} and "
                f"{cls.__qualname__}; give one another part_name."
            )
        for option in cls.__dict__.get("options", ()):
            _check_option_agrees(option, cls)
        _REGISTRY[cls.kind][name] = cls


def _check_option_agrees(option: Option, cls: type) -> None:
    for kind in KINDS:
        for other in _REGISTRY[kind].values():
            for theirs in other.options:
                if theirs.name == option.name and not theirs.same_as(option):
                    raise TypeError(
                        f"{cls.__qualname__} declares option {option.name!r} unlike "
                        f"{other.__qualname__} (type, default or range differ); rename it."
                    )


def registered(kind: str) -> dict[str, type[Any]]:
    """The registered part classes of one kind, by name, in definition order."""
    if kind not in _REGISTRY:
        raise ValueError(f"Unknown part kind {kind!r}; use one of {KINDS}.")
    return dict(_REGISTRY[kind])


def get_part(kind: str, name: str) -> type[Any]:
    """The part class registered as ``name``; a :class:`ValueError` lists the choices."""
    parts = registered(kind)
    if name not in parts:
        raise ValueError(f"Unknown {kind} {name!r}; choose one of: {', '.join(parts)}.")
    return parts[name]


def part_options() -> dict[str, Option]:
    """Every option declared by a registered part, by name (parts may share one)."""
    out: dict[str, Option] = {}
    for kind in KINDS:
        for cls in _REGISTRY[kind].values():
            for option in cls.options:
                out.setdefault(option.name, option)
    return out


def option_users(name: str) -> list[str]:
    """The ``kind:name`` of every registered part that reads option ``name``."""
    return [
        f"{kind} {part}"
        for kind in KINDS
        for part, cls in _REGISTRY[kind].items()
        if any(o.name == name for o in cls.options)
    ]


def parts_table() -> str:
    """The registered parts as a Markdown table (the README's parts table is this output):
    kind, CLI name, summary, class, options and declared compatibility facts."""
    rows = [
        "| kind | `--name` | what it is | class | options | declared |",
        "|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for name, cls in _REGISTRY[kind].items():
            options = ", ".join(f"`{o.flag}`" for o in cls.options) or "—"
            facts = []
            if kind in ("prior", "guide"):
                facts.append(f"latent space: {cls.latent_space}")
            if kind == "guide" and not cls.mixable:
                facts.append("not mixable")
            if kind == "prior" and cls.needs_mixable_guide:
                facts.append("needs a mixable guide")
            if kind == "likelihood":
                facts.append("discrete" if cls.discrete else "continuous")
            rows.append(
                f"| {kind} | `{name}` | {cls.summary} | `{cls.__name__}` | {options} | "
                f"{'; '.join(facts)} |"
            )
    return "\n".join(rows)

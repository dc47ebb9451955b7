r"""What a model/guide pair is, read from one traced run of it: its contract.

Every function of the library that takes a model and a guide accepts any Pyro program,
written as Pyro's own examples write them: any site names, any number of latent sites,
``model(xs, ys=None)``, labels observed at a sample site. What it needs to know is read
from a trace of the guide and of the model replayed on the guide's draws, on the first
batch of examples (:func:`read_program`), not from names:

- **observed sites**: the model's sample sites with ``obs=``. The *data site*
  (``obs_site``) is the one whose values the predictive checks replicate and the figures
  draw: the only observed site, else the one that observes the first argument. The other
  observed sites (labels observed at a sample site, as in Pyro's M2 example) are *label
  sites*: values the user gave, held fixed.
- **latent sites**: every sample site of the guide that is not observed, any names, any
  number, in the guide's order.
- **the plate over examples**: the outermost plate of the data site whose size is the
  batch size.
- **arguments**: as :meth:`pyro.infer.SVI.step` passes them, model and guide get the same
  positional arguments: ``model(x)``, or ``model(x, y)`` when there are labels (or any
  second tensor, such as a CVAE's targets). A function whose only way to take labels is a
  keyword-only ``y`` (or ``**kwargs``) gets ``y=y``.
- **dtype**: floating data are converted to the dtype of the parameters.
- **particles**: whether the program broadcasts over a plate of particles placed to the
  left of its own plates (as Pyro's vectorized ELBOs need), found by running it so on two
  examples and comparing with one run per particle.

Where the trace is ambiguous (two observed sites, neither of them the first argument), the
keyword ``obs_site=`` names the data site; ``latent_sites=`` selects latent sites. Every
function takes the same two keywords.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, overload

import pyro
import torch
from pyro import poutine
from pyro.poutine.uncondition_messenger import UnconditionMessenger
from pyro.poutine.util import prune_subsample_sites
from torch import nn

from pyro_vae.inference.sites import DATA_PLATE

__all__ = [
    "PARTICLE_PLATE",
    "Program",
    "UnconditionSites",
    "cast",
    "example_frame",
    "from_examples",
    "label_call",
    "parameter_dtype",
    "read_program",
    "to_examples",
    "trace_sites",
]

#: The plate of vectorized particles, placed to the left of every plate of the program.
PARTICLE_PLATE = "_pyro_vae_particles"
#: Examples on which a program is read.
READ_EXAMPLES = 8
#: Particles of the vectorization check.
_CHECK_PARTICLES = 2

LabelCall = Literal["positional", "keyword"]


class UnconditionSites(UnconditionMessenger):
    """:func:`pyro.poutine.uncondition` restricted to the named sites: those are sampled
    from their distributions, every other observed site keeps its observed value."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = frozenset(names)

    def _pyro_sample(self, msg: Any) -> None:
        if msg["name"] in self.names:
            super()._pyro_sample(msg)


def label_call(fn: Callable[..., Any]) -> LabelCall | None:
    """How ``fn`` takes a second tensor (labels): ``"positional"`` when it has a second
    positional parameter (or ``*args``), ``"keyword"`` when only a keyword-only ``y`` (or
    ``**kwargs``) can take it, ``None`` when it cannot take one."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature (a builtin): call it as Pyro would
        return "positional"
    kinds = [p.kind for p in params]
    positional = sum(
        k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for k in kinds
    )
    if positional >= 2 or inspect.Parameter.VAR_POSITIONAL in kinds:
        return "positional"
    keyword_y = any(p.name == "y" and p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    if keyword_y or inspect.Parameter.VAR_KEYWORD in kinds:
        return "keyword"
    return None


def _modules(fn: Callable[..., Any]) -> Iterator[nn.Module]:
    """The ``nn.Module`` s behind a callable: itself, the object of a bound method (or a
    callable object) and its module attributes (a plain class holding an encoder and a
    decoder), and the modules its code refers to (closures, globals)."""
    fn = inspect.unwrap(fn)
    owner = getattr(fn, "__self__", None)
    if owner is None and not inspect.isfunction(fn):
        owner = fn  # a callable object
    for obj in (fn, owner):
        if isinstance(obj, nn.Module):
            yield obj
    if owner is not None and not isinstance(owner, nn.Module):
        with contextlib.suppress(TypeError):
            yield from (v for v in vars(owner).values() if isinstance(v, nn.Module))
    try:
        refs = inspect.getclosurevars(fn)
    except (TypeError, ValueError):
        return
    yield from (
        v for v in (*refs.nonlocals.values(), *refs.globals.values()) if isinstance(v, nn.Module)
    )


def parameter_dtype(*fns: Callable[..., Any] | None) -> torch.dtype:
    """The floating dtype of the parameters behind the callables (the first found), else
    torch's default dtype."""
    for fn in fns:
        if fn is None:
            continue
        for module in _modules(fn):
            for p in module.parameters():
                if p.is_floating_point():
                    return p.dtype
    return torch.get_default_dtype()


@overload
def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...


@overload
def cast(t: None, dtype: torch.dtype) -> None: ...


def cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in ``dtype`` if it is floating point (integer labels and counts unchanged)."""
    if t is None or not t.is_floating_point() or t.dtype == dtype:
        return t
    return t.to(dtype)


def example_frame(site: Mapping[str, Any], plate: str) -> Any:
    """The frame of plate ``plate`` in the site's plate stack, or ``None``."""
    return next((f for f in site["cond_indep_stack"] if f.name == plate), None)


def _full(value: torch.Tensor, site: Mapping[str, Any]) -> torch.Tensor:
    fn = site["fn"]
    shape = torch.Size(fn.batch_shape) + torch.Size(fn.event_shape)
    try:
        return value.expand(torch.broadcast_shapes(value.shape, shape))
    except RuntimeError:
        return value


def to_examples(
    value: torch.Tensor, site: Mapping[str, Any], plate: str, event_dim: int | None = None
) -> torch.Tensor:
    """A tensor of a site of an un-vectorized trace (its value, or any tensor shaped
    batch + the last ``event_dim`` dimensions) as ``(N, *rest)``: the examples first.

    :raises ValueError: if the site is outside the plate over examples.
    """
    frame = example_frame(site, plate)
    if frame is None:
        raise ValueError(
            f"Site {site['name']!r} is outside plate {plate!r}, the plate over the examples, "
            "so it has no value per example; put it inside that plate."
        )
    if event_dim is None:
        event_dim = len(site["fn"].event_shape)
        value = _full(value, site)
    while value.dim() < event_dim - frame.dim:
        value = value.unsqueeze(0)
    return value.movedim(value.dim() - event_dim + frame.dim, 0)


def from_examples(rows: torch.Tensor, site: Mapping[str, Any], plate: str) -> torch.Tensor:
    """The inverse of :func:`to_examples` for a site's value: ``(N, *rest)`` back to the
    site's own layout (the examples at the plate's dimension)."""
    frame = example_frame(site, plate)
    event_dim = len(site["fn"].event_shape)
    return rows.movedim(0, rows.dim() - event_dim + frame.dim)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _in_particles(
    fn: Callable[..., Any], num_particles: int, dim: int, device: torch.device
) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=dim, device=device):  # type: ignore[arg-type]
            return fn(*args, **kwargs)

    return wrapped


@dataclass(frozen=True)
class Program:
    r"""A model/guide pair with the contract read from its trace (:func:`read_program`).

    :ivar model: the Pyro model (``None`` for a guide read alone).
    :ivar guide: the Pyro guide (``None`` for a model read alone, e.g. for prior draws).
    :ivar obs_site: the data site: observed, replicated by predictive checks and drawn by
        the figures (``None`` without a model, or when the trace leaves it ambiguous:
        :meth:`data_site` then says which keyword names it).
    :ivar label_sites: the other observed sites (labels observed at a sample site).
    :ivar latent_sites: the latent sample sites of the guide (of the model, without a
        guide), in the order they are sampled.
    :ivar plate: the name of the plate over the examples.
    :ivar max_plate_nesting: the number of vectorized plate dimensions of the pair.
    :ivar model_call: how the model takes labels: ``"positional"``, ``"keyword"`` or
        ``None`` (it cannot).
    :ivar guide_call: the same for the guide; a guide that cannot take them gets ``x``.
    :ivar obs_arg: which argument the data site observes: 0 (``x``), 1 (``y``, e.g. a
        CVAE's targets) or ``None`` (neither as given).
    :ivar dtype: the dtype of the parameters; floating data are converted to it.
    :ivar vectorizes: whether the pair runs correctly inside a plate of particles on the
        left of its own plates (``None``: not checked).
    :ivar vectorize_error: why it does not.
    """

    model: Callable[..., Any] | None = field(repr=False)
    guide: Callable[..., Any] | None = field(repr=False)
    obs_site: str | None
    label_sites: tuple[str, ...]
    latent_sites: tuple[str, ...]
    plate: str
    max_plate_nesting: int
    model_call: LabelCall | None
    guide_call: LabelCall | None
    obs_arg: int | None
    dtype: torch.dtype
    vectorizes: bool | None = None
    vectorize_error: str | None = None
    obs_site_error: str | None = field(default=None, repr=False)

    def data_site(self) -> str:
        """The data site; raises :class:`ValueError` naming ``obs_site=`` where the trace
        leaves it ambiguous (functions that need it call this)."""
        if self.obs_site is None:
            raise ValueError(self.obs_site_error or "A model is needed to find the data site.")
        return self.obs_site

    def arguments(
        self, role: str, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional and keyword arguments of the ``role`` (``"model"`` or
        ``"guide"``) function for data ``x`` and labels ``y``, converted to :attr:`dtype`."""
        x, y = cast(x, self.dtype), cast(y, self.dtype)
        how = self.model_call if role == "model" else self.guide_call
        if y is None or how is None:
            return (x,), {}
        return ((x, y), {}) if how == "positional" else ((x,), {"y": y})

    def call_model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Any:
        """Run the model on ``x`` (and ``y``) with its own calling convention."""
        args, kwargs = self.arguments("model", x, y)
        return self.model(*args, **kwargs)  # type: ignore[misc]

    def call_guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Any:
        """Run the guide on ``x`` (and ``y``) with its own calling convention."""
        args, kwargs = self.arguments("guide", x, y)
        return self.guide(*args, **kwargs)  # type: ignore[misc]

    def traces(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_particles: int | None = None,
        uncondition: bool = False,
        replay: poutine.Trace | None = None,
        run_model: bool = True,
    ) -> tuple[poutine.Trace, poutine.Trace]:
        """The guide's trace on the data and the model's trace replayed on its draws,
        subsample sites pruned: ``(model_trace, guide_trace)``.

        :param num_particles: run both inside a plate of this many particles to the left
            of every plate of the program (vectorized draws).
        :param uncondition: sample the data site from the model instead of observing it;
            label sites keep their observed values.
        :param replay: a trace whose latent values both functions replay.
        :param run_model: ``False``: the guide alone (an empty model trace).
        """
        guide = self.call_guide if self.guide is not None else _nothing
        model = self.call_model if self.model is not None and run_model else _nothing
        if uncondition:
            model = UnconditionSites([self.data_site()])(model)
        if num_particles is not None:
            dim = -(self.max_plate_nesting + 1)
            guide = _in_particles(guide, num_particles, dim, x.device)
            model = _in_particles(model, num_particles, dim, x.device)
        if replay is not None:
            guide = poutine.replay(guide, trace=replay)
        guide_tr = poutine.trace(guide).get_trace(x, y)
        model_tr = poutine.trace(
            poutine.replay(model, trace=guide_tr if replay is None else replay)
        ).get_trace(x, y)
        return prune_subsample_sites(model_tr), prune_subsample_sites(guide_tr)

    def latent_trace(self, guide_tr: poutine.Trace, model_tr: poutine.Trace) -> poutine.Trace:
        """The trace holding the latent sites' draws: the guide's, or the model's for a
        model read alone."""
        return guide_tr if self.guide is not None else model_tr


def _same_data(value: Any, ref: torch.Tensor | None) -> bool:
    """Whether a site's value is the tensor ``ref`` (or the same numbers, reshaped)."""
    if ref is None or not isinstance(value, torch.Tensor):
        return False
    if value is ref:
        return True
    if value.numel() != ref.numel() or value.device != ref.device:
        return False
    return bool((value.reshape(-1) == ref.reshape(-1).to(value.dtype)).all())


def _signature(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", getattr(fn, "__name__", type(fn).__name__))
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return name
    empty = inspect.Parameter.empty
    params = [p.replace(annotation=empty) for p in sig.parameters.values()]
    return f"{name}{sig.replace(parameters=params, return_annotation=empty)}"


def _check_arguments(
    model: Callable[..., Any] | None,
    guide: Callable[..., Any] | None,
    model_call: LabelCall | None,
    guide_call: LabelCall | None,
    x: torch.Tensor,
    y: torch.Tensor | None,
) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor of examples (N, ...), got {type(x).__name__}.")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one example (N, ...), got shape {tuple(x.shape)}.")
    if y is None:
        return
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a tensor with one row per example, got {type(y).__name__}.")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} examples but y has shape {tuple(y.shape)}; pass one row of y "
            "per example."
        )
    fn, call = (model, model_call) if model is not None else (guide, guide_call)
    if call is None:
        who = "model" if model is not None else "guide"
        raise ValueError(
            f"The data carry a second tensor y (shape {tuple(y.shape)}), but the {who} "
            f"{_signature(fn)} takes only one argument, so y would be ignored. Pass x alone, "  # type: ignore[arg-type]
            f"or give the {who} a second parameter, e.g. def {who}(xs, ys=None) (Pyro passes "
            "model and guide the same arguments)."
        )


def _data_site(
    model_tr: poutine.Trace,
    observed: list[str],
    xb: torch.Tensor,
    yb: torch.Tensor | None,
    obs_site: str | None,
    model_call: LabelCall | None,
) -> tuple[str | None, str | None]:
    """The data site, or ``None`` and why it is ambiguous; raises when nothing is
    observed (no function can work then) or a named site is not observed."""
    if obs_site is not None:
        if obs_site not in observed:
            node = model_tr.nodes.get(obs_site)
            why = (
                f"no sample site {obs_site!r}"
                if node is None or node["type"] != "sample"
                else f"a sample site {obs_site!r} but it is not observed"
            )
            raise ValueError(
                f"obs_site={obs_site!r}: the model has {why}; its observed sites are "
                f"{observed}. Pass one of them as obs_site=."
            )
        return obs_site, None
    if not observed:
        hint = ""
        if yb is None and model_call == "positional":
            hint = (
                " If the model observes its second argument (model(xs, ys=None) as in "
                "Pyro's CVAE example), pass the data as (x, y) so that it receives ys."
            )
        raise ValueError(
            "The model has no observed site: no sample statement in its trace has obs= "
            "(pyro.deterministic records values, it observes nothing), so the ELBO is "
            "exactly 0 and nothing can be learnt or evaluated. Observe the data, "
            f'e.g. pyro.sample("obs", likelihood, obs=x).{hint}'
        )
    if len(observed) == 1:
        return observed[0], None
    of_x = [name for name in observed if _same_data(model_tr.nodes[name]["value"], xb)]
    if len(of_x) == 1:
        return of_x[0], None
    return None, (
        f"The model observes {len(observed)} sites, {observed}, and none of them alone is "
        "the first argument x, so the data site is ambiguous: pass obs_site=<name>, the "
        "site whose values the checks replicate and the figures draw."
    )


def _latents(
    tr: poutine.Trace, latent_sites: str | Sequence[str] | None, who: str
) -> tuple[str, ...]:
    found = tuple(
        name
        for name, site in trace_sites(tr).items()
        if site["type"] == "sample" and not site["is_observed"]
    )
    if latent_sites is None:
        return found
    names = (latent_sites,) if isinstance(latent_sites, str) else tuple(latent_sites)
    if not names:
        raise ValueError(f"latent_sites is empty; name at least one of the {who}'s {list(found)}.")
    for name in names:
        if name not in found:
            raise ValueError(
                f"latent_sites={list(names)}: the {who} has no latent sample site {name!r}; "
                f"its latent sites are {list(found)}."
            )
    return names


def _example_plate(site: Mapping[str, Any], n: int, what: str) -> str:
    frames = [
        f
        for f in site["cond_indep_stack"]
        if f.vectorized and f.name != PARTICLE_PLATE and f.size in (n, -1)
    ]
    if not frames:
        raise ValueError(
            f"The {what} {site['name']!r} is in no plate over the {n} examples of the batch: "
            'wrap the per-example sample sites of model and guide in `with pyro.plate("data", '
            "len(x)):` so that the examples are independent."
        )
    return min(frames, key=lambda f: f.dim).name


def trace_sites(tr: poutine.Trace) -> dict[str, Any]:
    """A trace's sites, untyped (Pyro types a site's ``fn`` as any callable)."""
    return tr.nodes  # type: ignore[return-value]


def _nesting(*traces: poutine.Trace) -> int:
    dims: list[int] = [
        frame.dim
        for tr in traces
        for site in trace_sites(tr).values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.name != PARTICLE_PLATE and frame.dim is not None
    ]
    return -min(dims) if dims else 0


@contextlib.contextmanager
def _aside(x: torch.Tensor) -> Iterator[None]:
    """Runs that leave no trace: hidden from outer handlers, global RNG state restored,
    no autograd graph."""
    with torch.random.fork_rng(_devices(x)), poutine.block(), torch.no_grad():
        yield


def _devices(x: torch.Tensor) -> list[torch.device]:
    """The devices whose generators :func:`torch.random.fork_rng` saves for ``x``."""
    return [x.device] if x.device.type == "cuda" else []


def _per_particle(lp: torch.Tensor, k: int, nesting: int) -> torch.Tensor:
    """A log-density summed over everything but the particle dimension: ``(k,)``."""
    lp = lp.double()
    first = lp.dim() - (nesting + 1)
    if first < 0:
        return lp.sum().expand(k)
    lp = lp.movedim(first, 0)
    return lp.reshape(lp.shape[0], -1).sum(-1).expand(k)


def _totals(model_tr: poutine.Trace, guide_tr: poutine.Trace, k: int, nesting: int) -> torch.Tensor:
    r""":math:`\log p(x, z_k) - \log q(z_k)` of each particle, summed over the batch."""
    terms = []
    for sign, tr, latent_only in ((1.0, model_tr, False), (-1.0, guide_tr, True)):
        for site in trace_sites(tr).values():
            if site["type"] != "sample" or (latent_only and site["is_observed"]):
                continue
            lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            terms.append(sign * _per_particle(lp, k, nesting))
    return torch.stack(terms).sum(0)


def _particle_slice(traces: Sequence[poutine.Trace], i: int, nesting: int) -> poutine.Trace:
    """The latent draws of particle ``i`` of vectorized traces, as a trace to replay."""
    out = poutine.Trace()
    for tr in traces:
        for name, site in trace_sites(tr).items():
            if site["type"] != "sample" or site["is_observed"] or name in out.nodes:
                continue
            value = site["value"]
            pos = value.dim() - len(site["fn"].event_shape) - (nesting + 1)
            if pos >= 0:
                value = value.select(pos, min(i, value.shape[pos] - 1))
            out.add_node(name, type="sample", is_observed=False, value=value, infer=site["infer"])
    return out


def _vectorize_failure(program: Program, xb: torch.Tensor, yb: torch.Tensor | None) -> str | None:
    """``None`` if the program runs in a plate of particles exactly as it runs once per
    particle; else why not (the error its code raised, or the mismatch)."""
    k, nesting = _CHECK_PARTICLES, program.max_plate_nesting
    try:
        model_tr, guide_tr = program.traces(xb, yb, num_particles=k)
        together = _totals(model_tr, guide_tr, k, nesting)
        for i in range(k):
            replay = _particle_slice((guide_tr, model_tr), i, nesting)
            one = _totals(*program.traces(xb, yb, replay=replay), 1, nesting)[0]
            if xb.device.type == "meta":  # shapes only: the runs succeeded, no values
                continue
            if not torch.isclose(together[i], one, rtol=1e-4, atol=1e-3):
                return (
                    "in a plate of particles its log-density differs from one run per "
                    f"particle ({together[i].item():.6g} against {one.item():.6g})"
                )
    except Exception as error:  # the user's code decides what fails, and how
        return f"{type(error).__name__}: {error}"
    return None


def read_program(
    model: Callable[..., Any] | None,
    guide: Callable[..., Any] | None,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    obs_site: str | None = None,
    latent_sites: str | Sequence[str] | None = None,
    particles: bool = False,
    num_examples: int = READ_EXAMPLES,
    advance_rng: bool = False,
) -> Program:
    r"""Read the contract of a model/guide pair from one traced run on the first
    ``num_examples`` examples of ``x`` (and ``y``): the guide runs on the data, the model is
    replayed on the guide's draws, and the trace tells which sites are observed and latent,
    which plate runs over the examples and how deeply plates nest. The global random
    stream is left as it was (unless ``advance_rng``), and nothing reaches outer effect
    handlers.

    The arguments are passed as :meth:`pyro.infer.SVI.step` passes them: ``model(x)``, or
    ``model(x, y)`` when ``y`` is given (a keyword-only ``y`` parameter gets ``y=y``); the
    guide gets the same, or ``x`` alone if it takes one argument.

    :param model: the Pyro model, or ``None`` to read a guide alone.
    :param guide: the Pyro guide, or ``None`` to read a model alone (its unobserved
        sample sites are then the latent sites).
    :param x: the data (first argument), ``(N, ...)``; floating data are converted to the
        dtype of the parameters.
    :param y: a second argument with one row per example (labels, a CVAE's targets), or
        ``None``.
    :param obs_site: names the data site where the trace does not tell it.
    :param latent_sites: selects latent sites (a name or a sequence of names); default
        every latent site.
    :param particles: also check whether the pair vectorizes over particles
        (:attr:`Program.vectorizes`), on the same examples.
    :param num_examples: the examples read, the first of ``x``: pass the batch size the
        caller will use, so that a program written for that batch size reads as it runs.
    :param advance_rng: let the reading run draw from the global random stream, as a first
        pass that finds the plate nesting does (the particle check still leaves it as it
        was): callers that made such a pass keep their draws.
    :raises ValueError: when the model has no observed site, ``y`` is given but the model
        cannot take it, the data site is not in a plate over the examples, or a named site
        does not exist; the message names the keyword or argument to fix. An ambiguous
        data site raises only where it is needed (:meth:`Program.data_site`).
    """
    if model is None and guide is None:
        raise ValueError("Pass a model, a guide or both.")
    model_call = None if model is None else label_call(model)
    guide_call = None if guide is None else label_call(guide)
    _check_arguments(model, guide, model_call, guide_call, x, y)
    dtype = parameter_dtype(model, guide)
    n = min(x.shape[0], num_examples)
    xb, yb = cast(x[:n], dtype), cast(None if y is None else y[:n], dtype)
    program = Program(
        model, guide, None, (), (), DATA_PLATE, 0, model_call, guide_call, None, dtype
    )
    reading = contextlib.nullcontext() if advance_rng else torch.random.fork_rng(_devices(x))
    with reading, poutine.block(), torch.no_grad():
        model_tr, guide_tr = program.traces(xb, yb)
    with _aside(x):
        observed = [  # pyro.deterministic records a masked, observed site: not data
            name
            for name, site in trace_sites(model_tr).items()
            if site["type"] == "sample"
            and site["is_observed"]
            and not site["infer"].get("_deterministic")
        ]
        data_site, ambiguity = None, None
        if model is not None:
            data_site, ambiguity = _data_site(model_tr, observed, xb, yb, obs_site, model_call)
        elif obs_site is not None:
            raise ValueError("obs_site= needs the model; this function reads the guide alone.")
        source, who = (guide_tr, "guide") if guide is not None else (model_tr, "model")
        latents = _latents(source, latent_sites, who)
        if model is not None:  # the data site's plate; all observed sites share it
            plate = _example_plate(model_tr.nodes[data_site or observed[0]], n, "data site")
        elif latents:
            plate = _example_plate(source.nodes[latents[0]], n, "latent site")
        else:
            raise ValueError(f"The {who} has no latent sample site to read.")
        obs_arg = None
        if data_site is not None:
            value = model_tr.nodes[data_site]["value"]
            obs_arg = 0 if _same_data(value, xb) else 1 if _same_data(value, yb) else None
        program = replace(
            program,
            obs_site=data_site,
            label_sites=tuple(s for s in observed if s != data_site),
            latent_sites=latents,
            plate=plate,
            max_plate_nesting=_nesting(model_tr, guide_tr),
            obs_arg=obs_arg,
            obs_site_error=ambiguity,
        )
        if particles:
            failure = _vectorize_failure(program, xb, yb)
            program = replace(program, vectorizes=failure is None, vectorize_error=failure)
    return program

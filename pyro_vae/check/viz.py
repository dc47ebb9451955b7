r"""Figures: sample grids, reconstructions, interpolations, latent traversals and a 2-D
latent scatter, made with torchvision's ``make_grid`` / ``save_image`` and matplotlib.

The functions read the data site and the latent sites of any model/guide pair from a
trace (:func:`~pyro_vae.inference.program.read_program`; ``obs_site=`` and
``latent_sites=`` where the program is ambiguous), draw the distribution at the data site,
and set the latent sites with :func:`pyro.poutine.condition`. A code is the latent sites'
values side by side, in the guide's order, so that a hierarchy of latents is decoded as a
whole. Images show the means of :math:`p(x \mid z)` (for a Bernoulli likelihood, pixel
probabilities), which are less noisy than draws, in the shape the model observes (784-vectors
are shown as 28×28 images).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, overload

import torch
from pyro import poutine
from torchvision.utils import make_grid, save_image

from pyro_vae.check.diagnostics import posterior_means
from pyro_vae.data import check_feature_names
from pyro_vae.inference.program import (
    Program,
    from_examples,
    label_call,
    read_program,
    to_examples,
    trace_sites,
)

__all__ = [
    "as_images",
    "decode_means",
    "depends_on_labels",
    "interpolate",
    "latent_scatter",
    "latent_traversals",
    "lerp",
    "prior_means",
    "reconstruction_means",
    "samples_by_label",
    "save_figures",
    "save_images",
    "save_reconstructions",
    "slerp",
]

LatentSites = str | Sequence[str] | None


@overload
def _cycle(t: torch.Tensor, m: int) -> torch.Tensor: ...


@overload
def _cycle(t: None, m: int) -> None: ...


def _cycle(t: torch.Tensor | None, m: int) -> torch.Tensor | None:
    """``m`` rows of ``t``, repeating its rows in turn."""
    if t is None:
        return None
    return t[torch.arange(m, device=t.device) % t.shape[0]]


def _site_means(program: Program, model_tr: Any) -> torch.Tensor:
    """Means of the distribution at the data site, ``(N, *shape)`` (draws where the
    distribution has no mean)."""
    node = trace_sites(model_tr)[program.data_site()]
    try:
        mean = node["fn"].mean
    except NotImplementedError:
        mean = node["value"]
    return to_examples(mean, node, program.plate)


def _observed(program: Program, model_tr: Any) -> torch.Tensor:
    node = trace_sites(model_tr)[program.data_site()]
    return to_examples(node["value"], node, program.plate)


@torch.no_grad()
def prior_means(
    model: Callable,
    x_template: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    obs_site: str | None = None,
) -> torch.Tensor:
    r"""Means of :math:`p(x \mid z)` for :math:`z \sim p(z)`, one per row of ``x_template``.

    The model runs on ``(x_template, y)`` with its data site unconditioned, so an
    unconditional model uses ``x_template`` only for the batch size and shape; inputs it
    conditions on (a CVAE's ``x``, labels observed at a sample site) are kept.

    :returns: ``(N, *shape)`` in the shape the model observes.
    """
    program = read_program(
        model, None, x_template, y, obs_site=obs_site, num_examples=len(x_template)
    )
    model_tr, _ = program.traces(x_template, y, uncondition=True)
    return _site_means(program, model_tr)


@torch.no_grad()
def reconstruction_means(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    obs_site: str | None = None,
) -> torch.Tensor:
    r"""Means of :math:`p(x \mid z)` for one :math:`z \sim q(z \mid x)` per example."""
    program = read_program(model, guide, x, y, obs_site=obs_site, num_examples=len(x))
    model_tr, _ = program.traces(x, y)
    return _site_means(program, model_tr)


def as_images(x: torch.Tensor) -> torch.Tensor:
    """View data as ``(N, C, H, W)`` images: 784-vectors become 1×28×28."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 2 and x.shape[1] == 784:
        return x.reshape(-1, 1, 28, 28)
    raise ValueError(
        f"Cannot show data of shape {tuple(x.shape)} as images; expected (N, C, H, W), "
        "(N, H, W) or (N, 784)."
    )


def is_image(item_shape: tuple[int, ...] | list[int] | torch.Size) -> bool:
    """Whether items of this shape are shown as images: ``(C, H, W)`` with 1 or 3
    channels, ``(H, W)``, or 784-vectors (flattened MNIST)."""
    shape = tuple(item_shape)
    return (len(shape) == 3 and shape[0] in (1, 3)) or len(shape) == 2 or shape == (784,)


def save_feature_histograms(
    data: torch.Tensor,
    generated: torch.Tensor,
    path: str | os.PathLike,
    max_features: int = 16,
    feature_names: Sequence[str] | None = None,
) -> None:
    """Histograms of the first ``max_features`` features of the data and of generated
    rows, one panel per feature, for data that are not images; each panel is labelled
    with its name from ``feature_names`` (one per feature) or ``feature <j>``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = data.detach().cpu().reshape(data.shape[0], -1).float()
    generated = generated.detach().cpu().reshape(generated.shape[0], -1).float()
    names = _feature_labels(feature_names, data.shape[1])
    n = min(max_features, data.shape[1])
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for j, ax in enumerate(axes.flat):
        if j >= n:
            ax.axis("off")
            continue
        ax.hist(data[:, j].numpy(), bins=30, density=True, alpha=0.5, label="data")
        ax.hist(generated[:, j].numpy(), bins=30, density=True, alpha=0.5, label="generated")
        ax.set_xlabel(names[j])
        ax.set_ylabel("density")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _feature_labels(feature_names: Sequence[str] | None, num_features: int) -> list[str]:
    """``feature_names`` checked by :func:`~pyro_vae.data.check_feature_names` against the
    number of features, or ``feature_<j>``."""
    if feature_names is None:
        return [f"feature_{j}" for j in range(num_features)]
    return list(check_feature_names(feature_names, (num_features,)))


def save_rows(
    x: torch.Tensor, stem: str | os.PathLike, feature_names: Sequence[str] | None = None
) -> list[Path]:
    """Write generated rows as ``STEM.npz`` (array ``x``, and ``feature_names`` when
    given) and ``STEM.csv`` (a header of the feature names, or ``feature_<j>``)."""
    import numpy as np

    array = x.detach().cpu().reshape(x.shape[0], -1).numpy()
    names = _feature_labels(feature_names, array.shape[1])
    npz, csv = Path(f"{stem}.npz"), Path(f"{stem}.csv")
    if feature_names is None:
        np.savez(npz, x=array)
    else:
        np.savez(npz, x=array, feature_names=np.array(names))
    np.savetxt(csv, array, delimiter=",", header=",".join(names), comments="")
    return [npz, csv]


def save_images(x: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> None:
    """Save a batch as one PNG grid (values clipped to [0, 1])."""
    grid = make_grid(as_images(x.detach().cpu()).clamp(0, 1), nrow=nrow, padding=2, pad_value=1)
    save_image(grid, path)


def save_reconstructions(
    x: torch.Tensor, recon: torch.Tensor, path: str | os.PathLike, nrow: int = 8
) -> None:
    """Save originals and reconstructions as alternating rows of ``nrow`` images."""
    x, recon = as_images(x.detach().cpu()), as_images(recon.detach().cpu())
    rows = []
    for start in range(0, x.shape[0], nrow):
        rows += [x[start : start + nrow], recon[start : start + nrow]]
    save_images(torch.cat(rows), path, nrow=nrow)


@torch.no_grad()
def decode_means(
    model: Callable,
    z: torch.Tensor,
    x_template: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    obs_site: str | None = None,
    latent_sites: LatentSites = None,
) -> torch.Tensor:
    r"""Means of :math:`p(x \mid z)` for given codes ``z`` ``(M, D)``: the model runs on
    ``M`` rows of ``(x_template, y)`` (their rows repeated in turn) with its data site
    unconditioned and its latent sites fixed to the columns of ``z``, in the order of
    ``latent_sites`` (default the model's latent sites in the order it samples them; pass
    the guide's order, :attr:`~pyro_vae.inference.program.Program.latent_sites`, for codes
    from :func:`~pyro_vae.check.diagnostics.posterior_means`).

    :raises ValueError: if ``z`` has not as many columns as the sites have dimensions.
    """
    m = z.shape[0]
    template, labels = _cycle(x_template, m), _cycle(y, m)
    program = read_program(
        model, None, template, labels, obs_site=obs_site, latent_sites=latent_sites, num_examples=m
    )
    model_tr, _ = program.traces(template, labels, uncondition=True)  # type: ignore[arg-type]
    values, start = {}, 0
    for site in program.latent_sites:
        node = trace_sites(model_tr)[site]
        rest = to_examples(node["value"], node, program.plate).shape[1:]
        part = z[:, start : start + rest.numel()].reshape(m, *rest)
        values[site] = from_examples(part.to(node["value"].dtype), node, program.plate)
        start += rest.numel()
    if start != z.shape[1]:
        raise ValueError(
            f"z has {z.shape[1]} columns, but the latent sites {list(program.latent_sites)} "
            f"have {start} dimensions together; pass codes of that width, or latent_sites= "
            "naming the sites z holds."
        )
    fixed = replace(program, model=poutine.condition(model, data=values))
    model_tr, _ = fixed.traces(template, labels, uncondition=True)  # type: ignore[arg-type]
    return _site_means(program, model_tr)


def _is_class_labels(y: torch.Tensor) -> bool:
    """Integer class labels ``(N,)``, or one-hot rows ``(N, C)``."""
    if y.dim() == 1 and not y.is_floating_point():
        return True
    if y.dim() == 2 and y.shape[1] > 1:
        binary = ((y == 0) | (y == 1)).all()
        return bool(binary and (y.sum(-1) == 1).all())
    return False


def _classes(y: torch.Tensor) -> torch.Tensor:
    """Class indices of integer or one-hot labels."""
    return y.argmax(-1) if y.dim() == 2 else y


def _labels_like(
    classes: Sequence[int], like: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Labels for ``classes`` in the format of ``like``: one-hot rows if ``like`` is
    one-hot, else integer class indices."""
    index = torch.tensor(list(classes), dtype=torch.long, device=device)
    if like is not None and like.dim() == 2:
        return torch.nn.functional.one_hot(index, like.shape[1]).to(like.dtype)
    return index


def depends_on_labels(
    model: Callable, x_template: torch.Tensor, y: torch.Tensor | None = None
) -> bool:
    """Whether the model is conditional: it takes a second argument and its samples change
    with the label (tested by drawing with labels 0 and 1 from the same random state).

    :param y: labels whose format (integer or one-hot) the test labels follow.
    """
    if label_call(model) is None:
        return False
    n = x_template.shape[0]
    devices = [x_template.device] if x_template.device.type == "cuda" else []
    means = []
    for label in (0, 1):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            labels = _labels_like([label] * n, y, x_template.device)
            means.append(prior_means(model, x_template, labels))
    return not torch.equal(means[0], means[1])


def samples_by_label(
    model: Callable,
    x_template: torch.Tensor,
    labels: Sequence[int],
    per_label: int = 8,
    *,
    y_like: torch.Tensor | None = None,
    obs_site: str | None = None,
) -> torch.Tensor:
    """Prior sample means of a conditional model, ``per_label`` for each label in turn
    (one grid row per label with ``nrow=per_label``).

    :param y_like: labels whose format the generated ones follow (one-hot rows if it is
        one-hot, as for a model observing ``OneHotCategorical`` labels).
    """
    classes = [c for c in labels for _ in range(per_label)]
    y = _labels_like(classes, y_like, x_template.device)
    template = x_template[:1].expand(len(classes), *x_template.shape[1:])
    return prior_means(model, template, y, obs_site=obs_site)


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r"""Linear interpolation :math:`(1 - t) z_0 + t z_1` for each ``t`` (rows)."""
    t = t.reshape(-1, *([1] * z0.dim()))
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r"""Spherical interpolation (Shoemake, 1985; White, 2016, arXiv:1609.04468):
    :math:`\frac{\sin((1-t)\Omega)}{\sin\Omega} z_0 + \frac{\sin(t\Omega)}{\sin\Omega} z_1`
    with :math:`\cos\Omega = \hat z_0 \cdot \hat z_1`. It keeps the norm typical of
    high-dimensional Gaussian codes, where the straight line passes near the origin.
    Falls back to :func:`lerp` for (anti)parallel codes."""
    cos = torch.nn.functional.cosine_similarity(z0, z1, dim=-1).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4 or (math.pi - omega).abs() < 1e-4:
        return lerp(z0, z1, t)
    t = t.reshape(-1, *([1] * z0.dim()))
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def _guide_sites(
    guide: Callable, x: torch.Tensor, y: torch.Tensor | None, latent_sites: LatentSites
) -> tuple[str, ...]:
    return read_program(
        None, guide, x, y, latent_sites=latent_sites, num_examples=len(x)
    ).latent_sites


@torch.no_grad()
def interpolate(
    model: Callable,
    guide: Callable,
    x0: torch.Tensor,
    x1: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    y1: torch.Tensor | None = None,
    steps: int = 10,
    path: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = lerp,
    obs_site: str | None = None,
    latent_sites: LatentSites = None,
) -> torch.Tensor:
    r"""Decoded means along a path between the codes :math:`\mathbb{E}_q[z \mid x_0]` and
    :math:`\mathbb{E}_q[z \mid x_1]` of two items (every latent site, or those of
    ``latent_sites``), decoded with the inputs of the first item.

    :param x0: the first item (no batch dimension).
    :param x1: the second item.
    :param y: the second argument of the first item (a label, a CVAE's target), used to
        encode and decode, or ``None``.
    :param y1: the second item's, when it differs from ``y``.
    :param steps: points on the path, ends included.
    :param path: :func:`lerp` or :func:`slerp` (or any ``(z0, z1, t) -> (steps, D)``).
    :returns: ``(steps, *shape)``, the shape the model observes.
    """
    if steps < 2:
        raise ValueError(f"interpolate needs steps >= 2 (both ends), got {steps}.")
    pair = torch.stack([x0, x1])
    labels = None if y is None else torch.stack([y, y if y1 is None else y1])
    sites = _guide_sites(guide, pair, labels, latent_sites)
    z = posterior_means(guide, pair, labels, latent_sites=sites)
    t = torch.linspace(0, 1, steps, device=z.device)
    zs = path(z[0], z[1], t)
    first = None if y is None else y.unsqueeze(0)
    return decode_means(model, zs, x0.unsqueeze(0), first, obs_site=obs_site, latent_sites=sites)


@torch.no_grad()
def latent_traversals(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    dims: Sequence[int] | None = None,
    span: float = 3.0,
    steps: int = 9,
    obs_site: str | None = None,
    latent_sites: LatentSites = None,
) -> torch.Tensor:
    r"""Decoded means as one latent dimension at a time sweeps ``[-span, span]`` (in
    units of the standard normal prior) from the code :math:`\mathbb{E}_q[z \mid x]` of
    one item, the other dimensions fixed. The code holds every latent site (or those of
    ``latent_sites``) side by side.

    :param x: one item (no batch dimension).
    :param y: its second argument (label, target), or ``None``.
    :param dims: the dimensions to sweep; default the first ``min(D, 10)``.
    :returns: ``(len(dims) * steps, *shape)``: one row of ``steps`` images per dim.
    """
    labels = None if y is None else y.unsqueeze(0)
    sites = _guide_sites(guide, x.unsqueeze(0), labels, latent_sites)
    z = posterior_means(guide, x.unsqueeze(0), labels, latent_sites=sites)[0]
    dims = list(range(min(z.shape[-1], 10))) if dims is None else list(dims)
    if any(not 0 <= d < z.shape[-1] for d in dims):
        raise ValueError(f"dims must lie in [0, {z.shape[-1]}), got {dims}.")
    values = torch.linspace(-span, span, steps, device=z.device)
    zs = z.repeat(len(dims) * steps, 1)
    for i, d in enumerate(dims):
        zs[i * steps : (i + 1) * steps, d] = values
    return decode_means(model, zs, x.unsqueeze(0), labels, obs_site=obs_site, latent_sites=sites)


def latent_scatter(
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None,
    path: str | os.PathLike,
    *,
    conditional: bool = False,
    latent_sites: LatentSites = None,
) -> torch.Tensor:
    r"""Scatter plot of the codes :math:`\mathbb{E}_q[z \mid x]` (every latent site, or
    those of ``latent_sites``), coloured by label, projected on their first two principal
    components (:func:`torch.pca_lowrank`) when the code has more than 2 dimensions.
    Saved as PNG.

    :param y: labels for the colours (integer or one-hot; ``None`` or any other tensor:
        one colour).
    :param conditional: pass ``y`` to the guide too.
    :returns: the plotted ``(N, 2)`` coordinates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = posterior_means(guide, x, y if conditional else None, latent_sites=latent_sites).cpu()
    if z.shape[1] > 2:
        _, _, v = torch.pca_lowrank(z, q=2, center=True)
        xy, labels = (z - z.mean(0)) @ v[:, :2], ("PC 1", "PC 2")
    elif z.shape[1] == 2:
        xy, labels = z, ("z 1", "z 2")
    else:
        xy, labels = torch.cat([z, torch.zeros_like(z)], 1), ("z 1", "")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    coloured = y is not None and _is_class_labels(y)
    colours = _classes(y).cpu().numpy() if coloured else None  # type: ignore[arg-type]
    points = ax.scatter(xy[:, 0], xy[:, 1], c=colours, cmap="tab10", s=4, alpha=0.7)
    if coloured:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title("latent codes E_q[z|x]" + (" (PCA)" if z.shape[1] > 2 else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return xy


def save_figures(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None,
    out_dir: str | os.PathLike,
    *,
    num_samples: int = 64,
    label: int | None = None,
    obs_site: str | None = None,
    latent_sites: LatentSites = None,
    feature_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write every figure of this module for a model/guide pair and data ``x`` (and ``y``):

    ``samples.png`` (unconditional model; a model that conditions on ``x``, such as a
    CVAE, completes the first items) or ``samples_by_label.png`` (a model conditional on
    class labels ``y``: one row per label), ``samples_label<L>.png`` with ``label=L``,
    ``reconstructions.png``, ``interpolation_linear.png`` and
    ``interpolation_spherical.png`` (four pairs of items), ``traversals.png`` (the ten most
    active latent dims of the first item) and ``latent_scatter.png``. When the data site
    does not hold images, generated rows (``samples.npz``, ``samples.csv``) and
    per-feature histograms replace the image grids, with the columns and panels named by
    ``feature_names`` when given.

    The images are the data site's values as the model observes them (a CVAE's targets
    ``y``); ``y`` is passed to model and guide when the model observes it or depends on it.

    :raises ValueError: if ``label`` is given but the model does not depend on labels.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    m = min(2000, x.shape[0])
    program = read_program(
        model, guide, x, y, obs_site=obs_site, latent_sites=latent_sites, num_examples=m
    )
    keys: dict[str, Any] = {"obs_site": program.data_site()}
    sites = program.latent_sites
    targets = y is not None and program.obs_arg == 1  # y is the data the model observes
    conditional = (
        y is not None and not targets and _is_class_labels(y) and depends_on_labels(model, x[:2], y)
    )
    if label is not None and not conditional:
        raise ValueError(
            f"A label ({label}) was given, but this model does not depend on labels; drop "
            "--label, or train a conditional model (one whose prior or likelihood uses y)."
        )
    given = y if targets or conditional else None
    paths = []
    with torch.no_grad():
        model_tr, _ = program.traces(x[:m], _rows(given, m))
    data, recon = _observed(program, model_tr), _site_means(program, model_tr)
    template_x, template_y = _cycle(x, num_samples), _cycle(given, num_samples)
    if not is_image(data.shape[1:]):  # tables, counts: rows and per-feature histograms
        generated = (
            samples_by_label(model, x, [label], num_samples, y_like=y, **keys)
            if label is not None
            else prior_means(model, template_x, template_y, **keys)  # type: ignore[arg-type]
        )
        paths += save_rows(generated, out / "samples", feature_names)
        paths.append(out / "samples_histograms.png")
        save_feature_histograms(data, generated, paths[-1], feature_names=feature_names)
        paths.append(out / "latent_scatter.png")
        latent_scatter(
            guide,
            x[:m],
            _rows(y, m),
            paths[-1],
            conditional=given is not None,
            latent_sites=sites,
        )
        return paths
    if conditional:
        classes = sorted(int(c) for c in _classes(y).unique())  # type: ignore[arg-type]
        paths.append(out / "samples_by_label.png")
        save_images(samples_by_label(model, x, classes, 8, y_like=y, **keys), paths[-1], nrow=8)
        if label is not None:
            paths.append(out / f"samples_label{label}.png")
            samples = samples_by_label(model, x, [label], num_samples, y_like=y, **keys)
            save_images(samples, paths[-1])
    else:
        paths.append(out / "samples.png")
        save_images(prior_means(model, template_x, template_y, **keys), paths[-1])  # type: ignore[arg-type]
    n = min(32, x.shape[0])
    paths.append(out / "reconstructions.png")
    save_reconstructions(data[:n], recon[:n], paths[-1])
    pairs = [(i, i + 1) for i in range(0, min(8, x.shape[0] - 1), 2)]
    for name, path in (("linear", lerp), ("spherical", slerp)):
        rows = [
            interpolate(
                model,
                guide,
                x[i],
                x[j],
                None if given is None else given[i],
                y1=None if given is None else given[j],
                path=path,
                latent_sites=sites,
                **keys,
            )
            for i, j in pairs
        ]
        paths.append(out / f"interpolation_{name}.png")
        save_images(torch.cat(rows), paths[-1], nrow=10)
    activity = posterior_means(guide, x[:500], _rows(given, 500), latent_sites=sites).var(0)
    dims = activity.argsort(descending=True)[: min(10, activity.numel())].tolist()
    first = None if given is None else given[0]
    paths.append(out / "traversals.png")
    traversals = latent_traversals(model, guide, x[0], first, dims=dims, latent_sites=sites, **keys)
    save_images(traversals, paths[-1], nrow=9)
    paths.append(out / "latent_scatter.png")
    latent_scatter(
        guide, x[:m], _rows(y, m), paths[-1], conditional=given is not None, latent_sites=sites
    )
    return paths


def _rows(y: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if y is None else y[:n]

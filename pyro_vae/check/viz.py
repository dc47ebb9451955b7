r"""Figures: sample grids, reconstructions, interpolations, latent traversals and a 2-D
latent scatter, made with torchvision's ``make_grid`` / ``save_image`` and matplotlib.

The functions read the distribution at the observed site ``"x"`` from Pyro traces, and set
the latent site ``"z"`` with :func:`pyro.poutine.condition`, so they work for any
model/guide pair that follows the site conventions. Images show the means of
:math:`p(x \mid z)` (for a Bernoulli likelihood, pixel probabilities), which are less noisy
than draws.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from pyro import poutine
from torchvision.utils import make_grid, save_image

from pyro_vae.check.diagnostics import posterior_means
from pyro_vae.inference.sites import accepts_y, label_kwargs, replayed_traces

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


@torch.no_grad()
def prior_means(
    model: Callable, x_template: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Means of :math:`p(x \mid z)` for :math:`z \sim p(z)`, one per row of ``x_template``.

    The model runs unconditioned (``poutine.uncondition``), so ``x_template`` only sets the
    batch size and shape; its values are not used.
    """
    trace = poutine.trace(poutine.uncondition(model)).get_trace(
        x_template, **label_kwargs(model, y)
    )
    return trace.nodes["x"]["fn"].mean  # type: ignore[attr-defined]


@torch.no_grad()
def reconstruction_means(
    model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Means of :math:`p(x \mid z)` for one :math:`z \sim q(z \mid x)` per example."""
    trace, _ = replayed_traces(model, guide, x, y)
    return trace.nodes["x"]["fn"].mean


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
    data: torch.Tensor, generated: torch.Tensor, path: str | os.PathLike, max_features: int = 16
) -> None:
    """Histograms of the first ``max_features`` features of the data and of generated
    rows, one panel per feature, for data that are not images."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = data.detach().cpu().reshape(data.shape[0], -1).float()
    generated = generated.detach().cpu().reshape(generated.shape[0], -1).float()
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
        ax.set_xlabel(f"feature {j}")
        ax.set_ylabel("density")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_rows(x: torch.Tensor, stem: str | os.PathLike) -> list[Path]:
    """Write generated rows as ``STEM.npz`` (array ``x``) and ``STEM.csv``."""
    import numpy as np

    array = x.detach().cpu().reshape(x.shape[0], -1).numpy()
    npz, csv = Path(f"{stem}.npz"), Path(f"{stem}.csv")
    np.savez(npz, x=array)
    header = ",".join(f"feature_{j}" for j in range(array.shape[1]))
    np.savetxt(csv, array, delimiter=",", header=header, comments="")
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
    model: Callable, z: torch.Tensor, x_template: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Means of :math:`p(x \mid z)` for given codes ``z`` ``(M, D)``: the model runs
    unconditioned with site ``"z"`` fixed. ``x_template`` (one or more items) gives the
    data shape; ``y`` (``(M,)`` or ``None``) the labels of a conditional model."""
    m = z.shape[0]
    template = x_template[:1].expand(m, *x_template.shape[1:])
    run = poutine.condition(poutine.uncondition(model), data={"z": z})
    trace = poutine.trace(run).get_trace(template, **label_kwargs(model, y))
    return trace.nodes["x"]["fn"].mean  # type: ignore[attr-defined]


def depends_on_labels(model: Callable, x_template: torch.Tensor) -> bool:
    """Whether the model is conditional: it takes ``y`` and its samples change with the
    label (tested by drawing with labels 0 and 1 from the same random state)."""
    if not accepts_y(model):
        return False
    n = x_template.shape[0]
    means = []
    for label in (0, 1):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            labels = torch.full((n,), label, dtype=torch.long, device=x_template.device)
            means.append(prior_means(model, x_template, labels))
    return not torch.equal(means[0], means[1])


def samples_by_label(
    model: Callable, x_template: torch.Tensor, labels: Sequence[int], per_label: int = 8
) -> torch.Tensor:
    """Prior sample means of a conditional model, ``per_label`` for each label in turn
    (one grid row per label with ``nrow=per_label``)."""
    y = torch.tensor(list(labels), dtype=torch.long, device=x_template.device)
    y = y.repeat_interleave(per_label)
    template = x_template[:1].expand(len(y), *x_template.shape[1:])
    return prior_means(model, template, y)


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


@torch.no_grad()
def interpolate(
    model: Callable,
    guide: Callable,
    x0: torch.Tensor,
    x1: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    steps: int = 10,
    path: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = lerp,
) -> torch.Tensor:
    r"""Decoded means along a path between the codes :math:`\mathbb{E}_q[z \mid x_0]` and
    :math:`\mathbb{E}_q[z \mid x_1]` of two items.

    :param x0: the first item (no batch dimension).
    :param x1: the second item.
    :param y: the label (a 0-d tensor) used to encode and decode, for a conditional model.
    :param steps: points on the path, ends included.
    :param path: :func:`lerp` or :func:`slerp` (or any ``(z0, z1, t) -> (steps, D)``).
    :returns: ``(steps, *x_shape)``.
    """
    if steps < 2:
        raise ValueError(f"interpolate needs steps >= 2 (both ends), got {steps}.")
    pair = torch.stack([x0, x1])
    labels = None if y is None else y.reshape(1).expand(2)
    z = posterior_means(guide, pair, labels)
    t = torch.linspace(0, 1, steps, device=z.device)
    zs = path(z[0], z[1], t)
    return decode_means(model, zs, pair, None if y is None else y.reshape(1).expand(steps))


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
) -> torch.Tensor:
    r"""Decoded means as one latent dimension at a time sweeps ``[-span, span]`` (in
    units of the standard normal prior) from the code :math:`\mathbb{E}_q[z \mid x]` of
    one item, the other dimensions fixed.

    :param x: one item (no batch dimension).
    :param y: its label (0-d tensor), for a conditional model.
    :param dims: the dimensions to sweep; default the first ``min(D, 10)``.
    :returns: ``(len(dims) * steps, *x_shape)``: one row of ``steps`` images per dim.
    """
    labels = None if y is None else y.reshape(1)
    z = posterior_means(guide, x.unsqueeze(0), labels)[0]
    dims = list(range(min(z.shape[-1], 10))) if dims is None else list(dims)
    if any(not 0 <= d < z.shape[-1] for d in dims):
        raise ValueError(f"dims must lie in [0, {z.shape[-1]}), got {dims}.")
    values = torch.linspace(-span, span, steps, device=z.device)
    zs = z.repeat(len(dims) * steps, 1)
    for i, d in enumerate(dims):
        zs[i * steps : (i + 1) * steps, d] = values
    out_y = None if y is None else y.reshape(1).expand(len(zs))
    return decode_means(model, zs, x.unsqueeze(0), out_y)


def latent_scatter(
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None,
    path: str | os.PathLike,
    *,
    conditional: bool = False,
) -> torch.Tensor:
    r"""Scatter plot of the codes :math:`\mathbb{E}_q[z \mid x]`, coloured by label,
    projected on their first two principal components (:func:`torch.pca_lowrank`) when
    the latent dimension is above 2. Saved as PNG.

    :param y: labels for the colours (``None``: one colour).
    :param conditional: pass ``y`` to the guide too.
    :returns: the plotted ``(N, 2)`` coordinates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = posterior_means(guide, x, y if conditional else None).cpu()
    if z.shape[1] > 2:
        _, _, v = torch.pca_lowrank(z, q=2, center=True)
        xy, labels = (z - z.mean(0)) @ v[:, :2], ("PC 1", "PC 2")
    elif z.shape[1] == 2:
        xy, labels = z, ("z 1", "z 2")
    else:
        xy, labels = torch.cat([z, torch.zeros_like(z)], 1), ("z 1", "")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colours = None if y is None else y.cpu().numpy()
    points = ax.scatter(xy[:, 0], xy[:, 1], c=colours, cmap="tab10", s=4, alpha=0.7)
    if y is not None:
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
) -> list[Path]:
    """Write every figure of this module for a model/guide pair and data ``x`` (images):

    ``samples.png`` (unconditional model) or ``samples_by_label.png`` (a conditional model:
    one row per label), ``samples_label<L>.png`` with ``label=L``, ``reconstructions.png``,
    ``interpolation_linear.png`` and ``interpolation_spherical.png`` (four pairs of
    items), ``traversals.png`` (the ten most active latent dims of the first item) and
    ``latent_scatter.png``.

    :raises ValueError: if ``label`` is given but the model does not depend on labels.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    conditional = y is not None and depends_on_labels(model, x[:2])
    if label is not None and not conditional:
        raise ValueError(
            f"A label ({label}) was given, but this model does not depend on labels; drop "
            "--label, or train a conditional model (one whose prior or likelihood uses y)."
        )
    paths = []
    template = x[:1].expand(num_samples, *x.shape[1:])
    if not is_image(x.shape[1:]):  # tables, counts: rows and per-feature histograms
        generated = (
            samples_by_label(model, x, [label], num_samples)
            if label is not None
            else (prior_means(model, template, _rows(y, num_samples) if conditional else None))
        )
        paths += save_rows(generated, out / "samples")
        paths.append(out / "samples_histograms.png")
        save_feature_histograms(x, generated, paths[-1])
        paths.append(out / "latent_scatter.png")
        m = min(2000, x.shape[0])
        latent_scatter(guide, x[:m], _rows(y, m), paths[-1], conditional=conditional)
        return paths
    if conditional:
        classes = sorted(int(c) for c in y.unique())  # type: ignore[union-attr]
        paths.append(out / "samples_by_label.png")
        save_images(samples_by_label(model, x, classes, 8), paths[-1], nrow=8)
        if label is not None:
            paths.append(out / f"samples_label{label}.png")
            save_images(samples_by_label(model, x, [label], num_samples), paths[-1])
    else:
        paths.append(out / "samples.png")
        save_images(prior_means(model, template), paths[-1])
    labels = y if conditional else None
    n = min(32, x.shape[0])
    recon = reconstruction_means(model, guide, x[:n], _rows(labels, n))
    paths.append(out / "reconstructions.png")
    save_reconstructions(x[:n], recon, paths[-1])
    pairs = [(i, i + 1) for i in range(0, min(8, x.shape[0] - 1), 2)]
    for name, path in (("linear", lerp), ("spherical", slerp)):
        rows = [
            interpolate(model, guide, x[i], x[j], None if labels is None else labels[i], path=path)
            for i, j in pairs
        ]
        paths.append(out / f"interpolation_{name}.png")
        save_images(torch.cat(rows), paths[-1], nrow=10)
    activity = posterior_means(guide, x[:500], _rows(labels, 500)).var(0)
    dims = activity.argsort(descending=True)[: min(10, activity.numel())].tolist()
    first = None if labels is None else labels[0]
    paths.append(out / "traversals.png")
    save_images(latent_traversals(model, guide, x[0], first, dims=dims), paths[-1], nrow=9)
    paths.append(out / "latent_scatter.png")
    m = min(2000, x.shape[0])
    latent_scatter(guide, x[:m], _rows(y, m), paths[-1], conditional=conditional)
    return paths


def _rows(y: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if y is None else y[:n]

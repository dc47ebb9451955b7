"""Image figures made with torchvision's ``make_grid`` / ``save_image``.

The functions read the distribution at the observed site ``"x"`` from Pyro traces, so they
work for any model/guide pair that follows the site conventions.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from pyro import poutine
from torchvision.utils import make_grid, save_image

from ._sites import label_kwargs

__all__ = [
    "as_images",
    "prior_means",
    "reconstruction_means",
    "save_images",
    "save_reconstructions",
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
    return trace.nodes["x"]["fn"].mean


@torch.no_grad()
def reconstruction_means(
    model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Means of :math:`p(x \mid z)` for one :math:`z \sim q(z \mid x)` per example."""
    guide_trace = poutine.trace(guide).get_trace(x, **label_kwargs(guide, y))
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        x, **label_kwargs(model, y)
    )
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

"""The trainable parameters of a model/guide pair, found through Pyro's public API, the
device they live on and the default optimizer over them."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import nn

__all__ = [
    "default_optimizer",
    "load_param_store",
    "owner_modules",
    "param_store_state",
    "resolve_device",
    "trainable_params",
]


def owner_modules(*fns: Callable) -> list[nn.Module]:
    """The nn.Modules behind model and guide (a module, or a bound method of one)."""
    modules: list[nn.Module] = []
    for fn in fns:
        owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module) and all(owner is not m for m in modules):
            modules.append(owner)
    return modules


def trainable_params(
    loss_fn: Callable[..., torch.Tensor],
    modules: list[nn.Module],
    x: torch.Tensor,
    kwargs: dict[str, Any],
) -> tuple[list[torch.Tensor], list[str]]:
    """Module parameters plus every ``pyro.param`` site (``pyro.module`` included) that one
    evaluation of the loss touches, deduplicated; and the names of the param-store sites
    that do not belong to the modules (saved separately in checkpoints)."""
    params: dict[int, torch.Tensor] = {}
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                params[id(p)] = p
    module_params = set(params)
    with poutine.trace(param_only=True) as capture:
        loss_fn(x, **kwargs)
    store = pyro.get_param_store()
    store_names = []
    for name, site in capture.trace.nodes.items():
        value = site["value"]
        value = value.unconstrained() if hasattr(value, "unconstrained") else value  # type: ignore[union-attr]
        if isinstance(value, torch.Tensor) and value.requires_grad:
            params.setdefault(id(value), value)
            if id(value) not in module_params and name in store:
                store_names.append(name)
    return list(params.values()), store_names


def param_store_state(names: list[str]) -> dict[str, torch.Tensor]:
    """Unconstrained values of the named param-store sites, detached copies."""
    store = dict(pyro.get_param_store().named_parameters())
    return {n: store[n].detach().clone() for n in names if n in store}


def load_param_store(state: dict[str, torch.Tensor]) -> None:
    """Copy saved unconstrained values into the existing param-store sites, in place (the
    optimizer holds these very tensors)."""
    store = dict(pyro.get_param_store().named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            if name in store:
                store[name].copy_(value)


def resolve_device(device: str | torch.device | None, modules: list[nn.Module]) -> torch.device:
    """The device to train on; ``None`` keeps the device of the parameters (CPU if none)."""
    if device is None:
        for m in modules:
            for t in (*m.parameters(), *m.buffers()):
                return t.device
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}; use e.g. 'cpu' or 'cuda'.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {device} was requested but CUDA is not available here; use --device cpu."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Device {device} was requested but MPS is not available; use cpu.")
    return device


def default_optimizer(
    params: list[torch.Tensor],
    lr: float,
    device: torch.device,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Adam (with its decay rates ``betas``) with one fused kernel for all parameters where
    torch has one, else the multi-tensor (``foreach``) implementation; both are far
    cheaper per step than a loop over the parameters for small networks."""
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    kind: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
    return partial(torch.optim.Adam, lr=lr, betas=betas, **kind)(params)  # type: ignore[call-arg]

"""A user's own model written in plain Pyro trains with ``fit`` and is evaluated with
``elbo_terms``: the contract is the site names (observed "x", plate "data")."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch import nn
from torch.nn import functional as F

from pyro_vae import binarize, elbo_terms, fit


class HierarchicalVAE(nn.Module):
    """Two stochastic layers: p(z2) p(z1 | z2) p(x | z1), guide q(z1 | x) q(z2 | z1)."""

    def __init__(self, z1_dim: int = 8, z2_dim: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.z2_dim = z2_dim
        self.p_z1 = nn.Sequential(
            nn.Linear(z2_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z1_dim)
        )
        self.p_x = nn.Sequential(nn.Linear(z1_dim, hidden), nn.Softplus(), nn.Linear(hidden, 784))
        self.q_z1 = nn.Sequential(
            nn.Linear(784, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z1_dim)
        )
        self.q_z2 = nn.Sequential(
            nn.Linear(z1_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z2_dim)
        )

    @staticmethod
    def normal(params: torch.Tensor) -> dist.Distribution:
        loc, raw = params.chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1)

    def model(self, x: torch.Tensor) -> torch.Tensor:
        pyro.module("hvae", self)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(self.z2_dim), 1.0).to_event(1))
            z1 = pyro.sample("z1", self.normal(self.p_z1(z2)))
            logits = self.p_x(z1).reshape(*z1.shape[:-1], 1, 28, 28)
            return pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("hvae", self)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self.normal(self.q_z1(x.reshape(*x.shape[:-3], 784))))
            pyro.sample("z2", self.normal(self.q_z2(z1)))


def test_hierarchical_user_model_trains_with_fit_and_is_evaluated(bundled):
    x = binarize(bundled["train"].tensors[0][:1024], seed=0)
    xv = binarize(bundled["valid"].tensors[0][:300], seed=1)
    torch.manual_seed(0)
    hvae = HierarchicalVAE()
    before = elbo_terms(hvae.model, hvae.guide, xv)["elbo"].mean().item()
    history = fit(
        hvae.model,
        hvae.guide,
        x,
        epochs=3,
        batch_size=64,
        lr=3e-3,
        validation_data=xv,
        progress=False,
    )
    assert history["val_elbo"][-1] > before + 150  # from about -545 nats
    terms = elbo_terms(hvae.model, hvae.guide, xv)
    assert terms["elbo"].shape == (300,)
    assert torch.allclose(terms["elbo"], terms["reconstruction"] - terms["kl"])
    # elbo_terms (analytic KL per site where registered) estimates the same ELBO as
    # Pyro's Trace_ELBO (Monte Carlo): means agree within 4 standard errors.
    pyro.set_rng_seed(3)
    ours = torch.stack([elbo_terms(hvae.model, hvae.guide, xv)["elbo"] for _ in range(20)])
    pyro.set_rng_seed(4)
    theirs = torch.tensor(
        [-Trace_ELBO().loss(hvae.model, hvae.guide, xv) / len(xv) for _ in range(20)]
    )
    se = math.sqrt(ours.mean(1).var().item() / 20 + theirs.var().item() / 20)
    assert abs(ours.mean().item() - theirs.mean().item()) < 4 * se + 1e-3, (
        ours.mean().item(),
        theirs.mean().item(),
        se,
    )

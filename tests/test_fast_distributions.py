"""The fast log densities equal Pyro's: DiagonalNormalMixture against MixtureSameFamily,
IndependentBernoulli against Bernoulli(...).to_event(n)."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import distributions as dist

from pyro_vae.parts.distributions import DiagonalNormalMixture, IndependentBernoulli


def _params(k: int, d: int, dtype=torch.float32):
    pyro.set_rng_seed(0)
    loc = (torch.randn(k, d) * 2 + 3).to(dtype)
    scale = (torch.rand(k, d) * 1.5 + 0.05).to(dtype)
    logits = torch.randn(k).to(dtype)
    return logits, loc, scale


def _both(logits, loc, scale):
    comps = dist.Normal(loc, scale).to_event(1)
    mix = dist.Categorical(logits=logits)
    return DiagonalNormalMixture(mix, comps), dist.MixtureSameFamily(mix, comps)


@pytest.mark.parametrize("shape", [(11,), (4, 6), (2, 3, 5)])
def test_log_prob_matches_the_broadcast_mixture_in_float64(shape):
    logits, loc, scale = _params(50, 8, torch.float64)
    fast, ref = _both(logits, loc, scale)
    z = ref.sample(shape)
    got = fast.log_prob(z)
    assert got.shape == shape
    torch.testing.assert_close(got, ref.log_prob(z), atol=1e-9, rtol=0)


def test_float32_error_is_small_for_500_components():
    # VampPrior-sized: float32 agrees with the float64 broadcast to a few thousandths of a nat
    logits, loc, scale = _params(500, 50)
    fast, ref = _both(logits, loc, scale)
    z = ref.sample((300,))
    exact = _both(logits.double(), loc.double(), scale.double())[1].log_prob(z.double())
    err = (fast.log_prob(z).double() - exact).abs().max()
    assert err < 5e-3


def test_expanded_batch_keeps_the_class_and_the_density():
    logits, loc, scale = _params(7, 3, torch.float64)
    fast, ref = _both(logits, loc, scale)
    fast_e, ref_e = fast.expand([5]), ref.expand([5])
    assert isinstance(fast_e, DiagonalNormalMixture) and fast_e.batch_shape == (5,)
    z = torch.randn(4, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(fast_e.log_prob(z), ref_e.log_prob(z), atol=1e-9, rtol=0)
    # a value without the batch dimension broadcasts to the batch shape
    assert fast_e.log_prob(z[0, 0]).shape == (5,)


def test_per_example_components_fall_back_to_the_broadcast():
    pyro.set_rng_seed(1)
    loc = torch.randn(6, 4, 3, dtype=torch.float64)  # a different mixture per example
    scale = torch.rand(6, 4, 3, dtype=torch.float64) + 0.1
    logits = torch.randn(6, 4, dtype=torch.float64)
    fast, ref = _both(logits, loc, scale)
    z = torch.randn(2, 6, 3, dtype=torch.float64)
    torch.testing.assert_close(fast.log_prob(z), ref.log_prob(z), atol=1e-12, rtol=0)


def test_gradients_match():
    logits, loc, scale = _params(20, 4, torch.float64)
    grads = []
    for use_fast in (True, False):
        params = [t.clone().requires_grad_() for t in (logits, loc, scale)]
        fast, ref = _both(*params)
        z = torch.linspace(-2, 6, 40, dtype=torch.float64).reshape(10, 4)
        (fast if use_fast else ref).log_prob(z).sum().backward()
        grads.append([p.grad for p in params])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_other_component_families_are_refused():
    mix = dist.Categorical(logits=torch.zeros(3))
    with pytest.raises(ValueError, match="use MixtureSameFamily"):
        DiagonalNormalMixture(mix, dist.MultivariateNormal(torch.zeros(3, 2), torch.eye(2)))


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("x_batch", [(5,), (1, 5), (3, 5)])
def test_independent_bernoulli_log_prob_and_gradient_match_bernoulli(x_batch, grad):
    pyro.set_rng_seed(0)
    logits = (torch.randn(3, 5, 1, 4, 4, dtype=torch.float64) * 8).requires_grad_(grad)
    x = torch.bernoulli(torch.full((*x_batch, 1, 4, 4), 0.4, dtype=torch.float64))
    fast = IndependentBernoulli(dist.Bernoulli(logits=logits), 3)
    ref = dist.Bernoulli(logits=logits).to_event(3)
    assert fast.batch_shape == ref.batch_shape and fast.event_shape == (1, 4, 4)
    got, want = fast.log_prob(x), ref.log_prob(x)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)
    if not grad:
        return
    (g_fast,) = torch.autograd.grad(got.sum(), logits)
    (g_ref,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-9, rtol=0)


def test_independent_bernoulli_float32_expand_and_sampling():
    pyro.set_rng_seed(1)
    logits = torch.randn(7, 784) * 6  # decoder-sized logits, float32
    x = torch.bernoulli(torch.full((7, 784), 0.2))
    fast = IndependentBernoulli(dist.Bernoulli(logits=logits), 1)
    exact = dist.Bernoulli(logits=logits.double()).to_event(1).log_prob(x.double())
    assert (fast.log_prob(x).double() - exact).abs().max() < 1e-3  # of ~-3000 nats
    wide = fast.expand([4, 7])
    assert isinstance(wide, IndependentBernoulli) and wide.batch_shape == (4, 7)
    assert wide.log_prob(x).shape == (4, 7)
    assert fast.sample().shape == (7, 784) and set(fast.sample().unique().tolist()) <= {0, 1}
    torch.testing.assert_close(fast.mean, torch.sigmoid(logits))

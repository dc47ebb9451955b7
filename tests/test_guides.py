"""Guides: full covariance, amortized IAF and Power Spherical, checked against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import kl_divergence

from pyro_vae.parts.distributions import HypersphericalUniform, PowerSpherical, log_sphere_area
from pyro_vae.parts.guides import FullCovarianceNormalGuide, IAFGuide, PowerSphericalGuide
from pyro_vae.parts.priors import StandardNormalPrior

X_SHAPE = (1, 28, 28)


# --------------------------------------------------------------------------- full covariance


def test_full_covariance_samples_have_the_reported_covariance():
    guide = FullCovarianceNormalGuide.mlp(X_SHAPE, 3, (16,))
    x = torch.rand(2, *X_SHAPE)
    _, fresh = guide(x)  # the builders start from the diagonal Gaussian
    assert torch.equal(fresh, torch.diag_embed(torch.diagonal(fresh, dim1=-2, dim2=-1)))
    with torch.no_grad():  # strong, clearly non-diagonal correlations
        for p in guide.parameters():
            p.add_(torch.randn_like(p))
    loc, scale_tril = (t.detach() for t in guide(x))
    assert scale_tril.shape == (2, 3, 3)
    assert torch.equal(scale_tril.triu(1), torch.zeros_like(scale_tril))
    assert (torch.diagonal(scale_tril, dim1=-2, dim2=-1) > 0).all()
    cov = scale_tril @ scale_tril.mT
    off_diag = cov[0] - torch.diag(torch.diagonal(cov[0]))
    assert off_diag.abs().max() > 0.1 * cov[0].diagonal().max()  # truly full covariance
    q = guide.dist(x)
    assert q.event_shape == (3,) and q.batch_shape == (2,)
    z = q.rsample((200_000,))
    centred = z - z.mean(0)
    sample_cov = torch.einsum("sni,snj->nij", centred, centred) / (z.shape[0] - 1)
    tol = 4 * cov.diagonal(dim1=-2, dim2=-1).max() / math.sqrt(z.shape[0]) * 2
    assert (sample_cov - cov).abs().max() < tol, ((sample_cov - cov).abs().max(), tol)
    torch.testing.assert_close(z.mean(0), loc, atol=float(tol), rtol=0)


def test_full_covariance_kl_to_diagonal_prior_is_analytic_and_correct():
    guide = FullCovarianceNormalGuide.mlp(X_SHAPE, 4, (16,))
    q = guide.dist(torch.rand(2, *X_SHAPE))
    p = StandardNormalPrior(4).dist().expand((2,))
    kl = kl_divergence(q, p)
    # closed form for KL(N(m, S) || N(0, I))
    cov = q.covariance_matrix
    hand = 0.5 * (
        cov.diagonal(dim1=-2, dim2=-1).sum(-1) + (q.loc**2).sum(-1) - 4 - torch.logdet(cov)
    )
    torch.testing.assert_close(kl, hand, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- IAF


def _iaf(latent_dim: int = 3) -> IAFGuide:
    guide = IAFGuide.mlp(X_SHAPE, latent_dim, (16,), num_flows=2, context_dim=5)
    with torch.no_grad():  # move the flows away from their near-identity start
        for p in guide.flows.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return guide


def test_iaf_log_prob_is_change_of_variables():
    guide = _iaf()
    x = torch.rand(2, *X_SHAPE)
    loc, scale, context = guide(x)
    q = guide.dist(x)
    assert q.event_shape == (3,) and q.batch_shape == (2,)
    assert isinstance(q.base_dist, torch.distributions.Independent)

    z0 = torch.randn(2, 3)
    expected = []
    for n in range(2):
        layers = [f.condition(context[n]) for f in guide.flows]

        def flow(v, layers=layers):
            for t in layers:
                v = t(v)
            return v

        base = torch.distributions.Normal(loc[n], scale[n]).log_prob(z0[n]).sum()
        log_det = torch.linalg.slogdet(jacobian(flow, z0[n]))[1]
        expected.append((flow(z0[n]).detach(), base - log_det))
    y = torch.stack([e[0] for e in expected])
    # a fresh tensor, so the transforms invert it instead of reading their cache
    got = q.log_prob(y.clone())
    torch.testing.assert_close(got, torch.stack([e[1] for e in expected]), atol=1e-4, rtol=1e-4)


def test_iaf_sample_density_from_cache_matches_inversion_and_flow_depends_on_x():
    guide = _iaf()
    x = torch.rand(4, *X_SHAPE)
    q = guide.dist(x)
    z = q.rsample()
    torch.testing.assert_close(q.log_prob(z), q.log_prob(z.detach().clone()), atol=1e-4, rtol=1e-4)
    # same base, different context: a different density, so the flow is amortized over x
    loc, scale, context = guide(x)
    other = guide.make_dist(loc, scale, context.flip(0))
    assert (other.log_prob(z.detach().clone()) - q.log_prob(z)).abs().min() > 1e-3
    # the flow receives gradients through the ELBO's reparameterized sample
    (q.log_prob(z) - z.pow(2).sum(-1)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in guide.flows.parameters())


# --------------------------------------------------------------------------- Power Spherical


@pytest.mark.parametrize(("dim", "kappa"), [(3, 2.0), (10, 15.0), (64, 50.0)])
def test_power_spherical_samples_lie_on_the_sphere_with_the_mean_resultant_length(dim, kappa):
    loc = torch.nn.functional.normalize(torch.randn(dim), dim=0)
    q = PowerSpherical(loc, torch.tensor(kappa))
    z = q.rsample((100_000,))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(100_000))
    t = z @ loc
    alpha, beta = (dim - 1) / 2 + kappa, (dim - 1) / 2
    theory = (alpha - beta) / (alpha + beta)
    assert q.mean_resultant_length.item() == pytest.approx(theory)
    assert t.mean().item() == pytest.approx(theory, abs=4 * t.std().item() / math.sqrt(1e5))
    # the orthogonal part is isotropic: its mean is zero
    assert (z - t[:, None] * loc).mean(0).abs().max() < 0.02


@pytest.mark.parametrize(("dim", "kappa"), [(3, 4.0), (5, 2.0), (12, 7.5)])
def test_mean_resultant_length_formula_by_quadrature(dim, kappa):
    """The marginal of t = mu'z is p(t) ∝ (1 + t)^kappa (1 - t^2)^((d - 3) / 2); integrate."""
    t = torch.linspace(-1, 1, 400_001, dtype=torch.float64)[1:-1]
    w = (1 + t) ** kappa * (1 - t**2) ** ((dim - 3) / 2)
    numeric = torch.trapezoid(t * w, t) / torch.trapezoid(w, t)
    alpha, beta = (dim - 1) / 2 + kappa, (dim - 1) / 2
    assert numeric.item() == pytest.approx((alpha - beta) / (alpha + beta), abs=1e-5)
    # and the normalizer: area of S^(d-2) times the integral over t
    q = PowerSpherical(torch.eye(dim, dtype=torch.float64)[0], torch.tensor(kappa))
    log_z = math.log(torch.trapezoid(w, t).item()) + log_sphere_area(dim - 1)
    assert q.log_normalizer().item() == pytest.approx(log_z, abs=1e-4)


def test_power_spherical_entropy_kl_and_reparameterized_gradient():
    dim = 6
    loc = torch.nn.functional.normalize(torch.randn(dim), dim=0)
    kappa = torch.tensor(3.0, requires_grad=True)
    q = PowerSpherical(loc, kappa)
    z = q.rsample((200_000,))
    log_q = q.log_prob(z)
    se = 4 * log_q.std().item() / math.sqrt(z.shape[0])
    assert q.entropy().item() == pytest.approx(-log_q.mean().item(), abs=se)
    kl = kl_divergence(q, HypersphericalUniform(dim))
    mc = log_q.mean() + log_sphere_area(dim)
    assert kl.item() == pytest.approx(mc.item(), abs=se)
    assert PowerSpherical(loc, torch.tensor(0.0)).entropy().item() == pytest.approx(
        log_sphere_area(dim), rel=1e-6
    )
    # pathwise gradient of E[mu'z] = kappa / (kappa + d - 1)
    (z @ loc).mean().backward()
    assert kappa.grad.item() == pytest.approx((dim - 1) / (3.0 + dim - 1) ** 2, rel=0.05)


@pytest.mark.parametrize("kappa", [1e2, 1e4, 1e6])
def test_power_spherical_is_stable_at_dimension_64(kappa):
    dim = 64
    raw = torch.randn(8, dim, requires_grad=True)
    conc = torch.full((8,), kappa, requires_grad=True)
    loc = raw / raw.norm(dim=-1, keepdim=True)
    q = PowerSpherical(loc, conc)
    z = q.rsample((16,))
    log_q = q.log_prob(z)
    kl = kl_divergence(q, HypersphericalUniform(dim, (8,)))
    for value in (z, log_q, kl, q.entropy()):
        assert torch.isfinite(value).all()
    assert ((z.norm(dim=-1) - 1).abs() < 1e-5).all()
    # samples concentrate at the theoretical mean resultant length
    theory = kappa / (kappa + dim - 1)
    assert (z @ loc.detach().T).diagonal(dim1=-2, dim2=-1).mean().item() == pytest.approx(
        theory, abs=0.02
    )
    (log_q.sum() + kl.sum() + (z * torch.randn(dim)).sum()).backward()
    assert torch.isfinite(raw.grad).all() and torch.isfinite(conc.grad).all()


def test_power_spherical_guide_outputs_unit_directions():
    guide = PowerSphericalGuide.mlp(X_SHAPE, 5, (16,))
    last = guide.encoder.net[-1]
    with torch.no_grad():  # raw concentration 0: kappa = kappa_0 = 10 d
        last.weight[-1].zero_()
        last.bias[-1].zero_()
    loc, conc = guide(torch.rand(3, *X_SHAPE))
    torch.testing.assert_close(loc.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(conc, torch.full((3,), 50.0))
    q = guide.dist(torch.rand(3, *X_SHAPE))
    assert q.event_shape == (5,) and q.batch_shape == (3,)
    with pytest.raises(ValueError, match=">= 2"):
        IAFGuide.mlp(X_SHAPE, 1)


def test_sphere_latent_reaches_the_decoder_with_unit_variance_coordinates():
    from pyro_vae.parts.nn import MLP, latent_input_scale
    from pyro_vae.runs import RunConfig, build_model

    d = 16
    assert latent_input_scale(d, on_sphere=True) == pytest.approx(4.0)
    assert latent_input_scale(d, on_sphere=False) == 1.0
    z = PowerSpherical(torch.nn.functional.normalize(torch.randn(d), dim=0), torch.tensor(0.0))
    draws = z.rsample((20000,)) * latent_input_scale(d, True)  # kappa 0: uniform on S^15
    assert draws.pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)  # |z|^2 = d exactly
    assert draws.var(0).mean().item() == pytest.approx(1.0, abs=0.03)
    config = RunConfig(
        x_shape=[1, 28, 28], latent_dim=d, hidden_dims=[8], prior="sphere", guide="powerspherical"
    )
    decoder = build_model(config).likelihood.decoder
    plain = MLP(d, (8,), (1, 28, 28))
    plain.load_state_dict(decoder.state_dict())  # same parameters: the scale is a constant
    u = torch.nn.functional.normalize(torch.randn(5, d), dim=-1)
    torch.testing.assert_close(decoder(u), plain(4.0 * u))
    assert build_model(config.replace(prior="normal", guide="diagonal")).likelihood.decoder(
        u
    ).shape == (5, 1, 28, 28)
    with pytest.raises(ValueError, match="input_scale"):
        MLP(d, (8,), 3, input_scale=0.0)

"""Device independence: every tensor is created where the data or the parameters live.

CI has no GPU, so the check runs on the CPU with the *default* device switched to
``meta``: a part that creates a tensor without ``device=`` (the bug that breaks GPU runs)
then makes a meta tensor, which a dispatch mode reports with the op that made it. A static
scan catches the other bug, a hard-coded ``"cpu"``/``"cuda"``.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.utils._python_dispatch import TorchDispatchMode

import pyro_vae
from pyro_vae import (
    IWAE,
    VAE,
    BernoulliLikelihood,
    BetaELBO,
    ContinuousBernoulliLikelihood,
    DiagonalNormalGuide,
    DiscretizedLogisticLikelihood,
    FlowPrior,
    FreeBitsELBO,
    FullCovarianceNormalGuide,
    IAFGuide,
    LearnedNormalPrior,
    MixtureOfGaussiansPrior,
    NormalLikelihood,
    PowerSphericalGuide,
    ScoreFunctionELBO,
    SemiSupervisedVAE,
    StandardNormalPrior,
    UniformSpherePrior,
    VampPrior,
    conditional_vae,
    elbo_terms,
    latent_diagnostics,
    log_likelihood,
    posterior_predictive,
    prior_predictive,
)

X_SHAPE = (1, 28, 28)


class NoDefaultDeviceTensors(TorchDispatchMode):
    """Records every op whose output landed on the (meta) default device."""

    def __init__(self) -> None:
        super().__init__()
        self.offenders: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in outs):
            stack = traceback.extract_stack()[:-1]  # without this method
            frames = [f for f in stack if "/torch/" not in f.filename]
            ours = [f for f in frames if "/pyro_vae/" in f.filename]
            # Pyro's own bookkeeping (e.g. the index tensor of its vectorized-particles
            # plate, entered before our code runs) is not ours to fix; anything created
            # while pyro_vae code is on the stack, or directly by the caller, is.
            if _inside_pyros_particle_plate(frames, ours):
                return out
            if ours or "site-packages/pyro/" not in frames[-1].filename:
                where = (ours or frames)[-1]
                self.offenders.append(f"{func} at {where.filename}:{where.lineno}")
        return out


def _inside_pyros_particle_plate(frames, ours) -> bool:
    """Pyro's ``ELBO._vectorized_num_particles`` makes its particle plate (no ``device=``
    argument exists there) below an objective of ours (``IWAE.log_weights``): that tensor
    is Pyro's, unless our model or guide code runs deeper than the plate's creation."""
    pyro_plate = [
        i
        for i, f in enumerate(frames)
        if "site-packages/pyro/" in f.filename and f.name == "_vectorized_num_particles"
    ]
    if not pyro_plate or not ours:
        return False
    deepest_ours = max(i for i, f in enumerate(frames) if "/pyro_vae/" in f.filename)
    return deepest_ours < pyro_plate[-1]


def run_on_meta_default(fn):
    mode = NoDefaultDeviceTensors()
    torch.set_default_device("meta")
    try:
        with mode:
            fn()
    finally:
        torch.set_default_device("cpu")
    assert mode.offenders == [], "tensors created on the default device:\n" + "\n".join(
        mode.offenders[:5]
    )


BUILDERS = {
    "bernoulli": lambda: VAE(
        StandardNormalPrior(4),
        BernoulliLikelihood.mlp(4, X_SHAPE, (16,)),
        DiagonalNormalGuide.mlp(X_SHAPE, 4, (16,)),
    ),
    "cbernoulli-conv": lambda: VAE(
        StandardNormalPrior(4),
        ContinuousBernoulliLikelihood.conv(4, X_SHAPE),
        DiagonalNormalGuide.conv(4),
    ),
    "normal-learned-scale": lambda: VAE(
        StandardNormalPrior(4),
        NormalLikelihood.mlp(4, X_SHAPE, (16,), learn_scale=True),
        DiagonalNormalGuide.mlp(X_SHAPE, 4, (16,)),
    ),
    "learned-fullcov": lambda: VAE(
        LearnedNormalPrior(4),
        BernoulliLikelihood.mlp(4, X_SHAPE, (16,)),
        FullCovarianceNormalGuide.mlp(X_SHAPE, 4, (16,)),
    ),
    "mog-iaf": lambda: VAE(
        MixtureOfGaussiansPrior(4, 3),
        BernoulliLikelihood.mlp(4, X_SHAPE, (16,)),
        IAFGuide.mlp(X_SHAPE, 4, (16,), num_flows=2),
    ),
    "flow-dlogistic": lambda: VAE(
        FlowPrior.mlp(4, 2, (16,)),
        DiscretizedLogisticLikelihood.mlp(4, X_SHAPE, (16,)),
        DiagonalNormalGuide.mlp(X_SHAPE, 4, (16,)),
    ),
    "vamp": lambda: _vamp(),
    "sphere": lambda: VAE(
        UniformSpherePrior(4),
        BernoulliLikelihood.mlp(4, X_SHAPE, (16,)),
        PowerSphericalGuide.mlp(X_SHAPE, 4, (16,)),
    ),
}


def _vamp() -> VAE:
    guide = DiagonalNormalGuide.mlp(X_SHAPE, 4, (16,))
    return VAE(VampPrior(guide, 3, X_SHAPE), BernoulliLikelihood.mlp(4, X_SHAPE, (16,)), guide)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_model_guide_and_evaluation_follow_the_data(name):
    vae = BUILDERS[name]()
    x = torch.bernoulli(torch.full((6, *X_SHAPE), 0.3))

    def work():
        for elbo in (
            Trace_ELBO(),
            TraceMeanField_ELBO(),
            Trace_ELBO(num_particles=2, vectorize_particles=True),
        ):
            elbo.differentiable_loss(vae.model, vae.guide, x).backward()
        elbo_terms(vae.model, vae.guide, x)
        vae.model(num_samples=3)

    run_on_meta_default(work)


def _data(shape=(6, *X_SHAPE)) -> torch.Tensor:
    # 8-bit values: binary, so that every likelihood above accepts them
    return torch.bernoulli(torch.full(shape, 0.3))


@pytest.mark.parametrize("name", ["bernoulli", "mog-iaf", "vamp", "sphere"])
def test_objectives_likelihood_diagnostics_and_ppc_follow_the_data(name):
    vae = BUILDERS[name]()
    x = _data()

    def work():
        for elbo in (
            IWAE(num_particles=3),
            BetaELBO(Trace_ELBO(), beta=0.5, warmup_steps=10),
            ScoreFunctionELBO(),
        ):
            elbo.differentiable_loss(vae.model, vae.guide, x).backward()
        if name == "bernoulli":
            FreeBitsELBO(0.1).differentiable_loss(vae.model, vae.guide, x).backward()
        log_likelihood(vae.model, vae.guide, x, num_samples=5, particle_chunk=2)
        latent_diagnostics(vae.model, vae.guide, x)
        posterior_predictive(vae.model, vae.guide, x, num_samples=2)
        prior_predictive(vae.model, x, num_samples=2)

    run_on_meta_default(work)


def test_conditional_and_semisupervised_models_follow_the_data():
    cvae = conditional_vae(3, 4, X_SHAPE, hidden_dims=(16,))
    m2 = SemiSupervisedVAE.mlp(3, 4, X_SHAPE, hidden_dims=(16,))
    x, y = _data(), torch.tensor([0, 1, 2, 0, 1, 2])

    def work():
        TraceMeanField_ELBO().differentiable_loss(cvae.model, cvae.guide, x, y).backward()
        log_likelihood(cvae.model, cvae.guide, x, y, num_samples=4)
        cvae.model(None, y)
        m2_loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss
        m2_loss(m2.model, m2.guide, x).backward()  # y enumerated
        m2_loss(m2.model, m2.guide, x, y).backward()  # y observed
        m2.classify(x)
        m2.model(num_samples=3)

    run_on_meta_default(work)


def test_the_check_catches_a_tensor_made_without_device():
    def careless():
        torch.zeros(3)  # what a part must never do: it ignores the data's device

    with pytest.raises(AssertionError, match=r"aten\.zeros"):
        run_on_meta_default(careless)


HARD_CODED = re.compile(r"""device\s*=\s*["'](cpu|cuda)|\.cuda\(|torch\.device\(\s*["']cuda""")


def test_no_hard_coded_device_in_the_library():
    allowed = {"distributed.py"}  # cuda:LOCAL_RANK under torchrun is the one legitimate use
    hits = []
    for path in Path(pyro_vae.__file__).parent.rglob("*.py"):
        if path.name in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if HARD_CODED.search(line):
                hits.append(f"{path.name}:{number}: {line.strip()}")
    assert hits == []

"""Semi-supervised M2: exact enumeration of the label and training on few labels."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_vae import binarize
from pyro_vae.semisupervised import (
    SemiSupervisedVAE,
    classification_accuracy,
    fit_semisupervised,
)


def test_enumerated_loss_is_the_m2_unlabelled_bound():
    r"""TraceEnum's loss on unlabelled x equals, for the same draws of z,
    -sum_n [sum_y q(y|x) (log p(x, y, z_y) - log q(z_y | x, y)) + H(q(y|x))]."""
    torch.manual_seed(0)
    m2 = SemiSupervisedVAE.mlp(3, 2, (6,), (8,))
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    pyro.set_rng_seed(4)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, x)
    pyro.set_rng_seed(4)
    with torch.no_grad():
        q_y = m2.class_dist(x)
        labels = torch.arange(3).reshape(3, 1)
        q_z = m2.posterior.dist(x, labels)
        z = q_z.rsample()  # (3, 5, 2): the same draws as the enumerated guide's
        log_joint = (
            m2.prior.dist().log_prob(z)
            + dist.Categorical(logits=torch.zeros(3)).log_prob(labels)
            + m2.likelihood.dist(z, labels).log_prob(x)
        )
        bound_given_y = log_joint - q_z.log_prob(z)  # (3, 5)
        probs = q_y.probs.T  # (3, 5)
        unlabelled = (probs * bound_given_y).sum(0) + q_y.entropy()
    assert loss == pytest.approx(-unlabelled.sum().item(), rel=1e-5)


def test_m2_learns_from_few_labels(bundled):
    """20 labels per class plus 2,000 unlabelled images, one epoch: the classifier is
    far above chance (0.1) on held-out images."""
    x, y = bundled["train"].tensors
    xv, yv = bundled["valid"].tensors
    lab = torch.cat([(y[:2000] == c).nonzero().flatten()[:20] for c in range(10)])
    torch.manual_seed(0)
    m2 = SemiSupervisedVAE.mlp(10, 8, (1, 28, 28), (64,))
    xb = binarize(x[:2000], seed=0)
    xv = binarize(xv[:500], seed=1)
    before = classification_accuracy(m2, xv, yv[:500])
    history = fit_semisupervised(
        m2,
        (xb[lab], y[lab]),
        xb,
        epochs=1,
        batch_size=100,
        lr=2e-3,
        validation_data=(xv, yv[:500]),
    )
    assert len(history) == 1 and history.last["step"] == 20
    assert history.last["val_accuracy"] > 0.5, (before, history.last)
    assert before < 0.25


def test_m2_refuses_bad_labels():
    m2 = SemiSupervisedVAE.mlp(3, 2, (6,), (8,))
    x = torch.zeros(4, 6)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        m2.model(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fit_semisupervised(m2, (x, torch.tensor([0, 1, 5, 1])), x, epochs=1)
    with pytest.raises(ValueError, match="unlabelled is empty"):
        fit_semisupervised(m2, (x, torch.tensor([0, 1, 2, 1])), x[:0], epochs=1)
    generated = m2.model(None, torch.tensor([0, 2]))
    assert generated.shape == (2, 6)

"""pyro-vae: variational autoencoders as Pyro probabilistic programs.

The generative model and the amortized guide are Pyro functions assembled from plug-in
parts (prior, likelihood, guide); :func:`fit` and every check train and evaluate any Pyro
model/guide pair, whose sites, plate over examples and arguments are read from a trace
(:func:`pyro_vae.inference.program.read_program`).
"""

from pyro_vae.check.diagnostics import PosteriorCollapseWarning, latent_diagnostics
from pyro_vae.check.evaluate import elbo_terms, evaluate
from pyro_vae.check.loglik import log_likelihood
from pyro_vae.check.ppc import (
    bayesian_p_values,
    feature_checks,
    posterior_predictive,
    prior_predictive,
)
from pyro_vae.data import (
    DynamicBinarization,
    binarize,
    load_binarized_mnist,
    load_bundled_mnist,
    load_mnist,
    load_tensor_file,
    read_idx,
)
from pyro_vae.inference.particles import ParticleLoopWarning
from pyro_vae.inference.program import Program, read_program
from pyro_vae.models.hvae import HierarchicalVAE
from pyro_vae.models.semisupervised import SemiSupervisedVAE, split_labelled
from pyro_vae.models.vae import VAE, conditional_vae
from pyro_vae.objectives import (
    IWAE,
    OBJECTIVES,
    BetaELBO,
    FreeBitsELBO,
    ScoreFunctionELBO,
    make_objective,
)
from pyro_vae.parts.conditional import ConditionalNormalPrior, condition_on_labels
from pyro_vae.parts.guides import (
    DiagonalNormalGuide,
    FullCovarianceNormalGuide,
    IAFGuide,
    PowerSphericalGuide,
)
from pyro_vae.parts.likelihoods import (
    BernoulliLikelihood,
    BinomialLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    Likelihood,
    NegativeBinomialLikelihood,
    NormalLikelihood,
    PoissonLikelihood,
    ZeroInflatedNegativeBinomialLikelihood,
)
from pyro_vae.parts.nn import MLP, ConvDecoder, ConvEncoder, GatedLinear, latent_input_scale
from pyro_vae.parts.priors import (
    FlowPrior,
    LearnedNormalPrior,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
    UniformSpherePrior,
    VampPrior,
)
from pyro_vae.train.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.train.loop import History, TrainingDivergedError, fit
from pyro_vae.train.semisupervised import fit_semisupervised

__version__ = "0.1.0"

__all__ = [
    "IWAE",
    "MLP",
    "OBJECTIVES",
    "VAE",
    "BernoulliLikelihood",
    "BetaELBO",
    "BinomialLikelihood",
    "ConditionalNormalPrior",
    "ContinuousBernoulliLikelihood",
    "ConvDecoder",
    "ConvEncoder",
    "DiagonalNormalGuide",
    "DiscretizedLogisticLikelihood",
    "DynamicBinarization",
    "FlowPrior",
    "FreeBitsELBO",
    "FullCovarianceNormalGuide",
    "GatedLinear",
    "HierarchicalVAE",
    "History",
    "IAFGuide",
    "LearnedNormalPrior",
    "Likelihood",
    "MixtureOfGaussiansPrior",
    "NegativeBinomialLikelihood",
    "NormalLikelihood",
    "ParticleLoopWarning",
    "PoissonLikelihood",
    "PosteriorCollapseWarning",
    "PowerSphericalGuide",
    "Program",
    "ScoreFunctionELBO",
    "SemiSupervisedVAE",
    "StandardNormalPrior",
    "TrainingDivergedError",
    "UniformSpherePrior",
    "VampPrior",
    "ZeroInflatedNegativeBinomialLikelihood",
    "bayesian_p_values",
    "binarize",
    "condition_on_labels",
    "conditional_vae",
    "elbo_terms",
    "evaluate",
    "feature_checks",
    "fit",
    "fit_semisupervised",
    "latent_diagnostics",
    "latent_input_scale",
    "load_binarized_mnist",
    "load_bundled_mnist",
    "load_checkpoint",
    "load_mnist",
    "load_tensor_file",
    "log_likelihood",
    "make_objective",
    "posterior_predictive",
    "prior_predictive",
    "read_idx",
    "read_program",
    "save_checkpoint",
    "split_labelled",
]

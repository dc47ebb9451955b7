"""pyro-vae: variational autoencoders as Pyro probabilistic programs.

The generative model and the amortized guide are Pyro functions assembled from plug-in
parts (prior, likelihood, guide); :func:`fit` trains any model/guide pair that follows the
site conventions (observed ``"x"``, latent ``"z"``, labels ``"y"``, plate ``"data"``).
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .conditional import ConditionalNormalPrior, condition_on_labels, conditional_vae
from .data import (
    DynamicBinarization,
    binarize,
    load_binarized_mnist,
    load_bundled_mnist,
    load_mnist,
    load_tensor_file,
    read_idx,
)
from .diagnostics import PosteriorCollapseWarning, latent_diagnostics
from .evaluate import elbo_terms, evaluate
from .guides import DiagonalNormalGuide, FullCovarianceNormalGuide, IAFGuide, PowerSphericalGuide
from .likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    Likelihood,
    NormalLikelihood,
)
from .loglik import log_likelihood
from .nn import MLP, ConvDecoder, ConvEncoder, latent_input_scale
from .objectives import (
    IWAE,
    OBJECTIVES,
    BetaELBO,
    FreeBitsELBO,
    ScoreFunctionELBO,
    make_objective,
)
from .ppc import bayesian_p_values, posterior_predictive, prior_predictive
from .priors import (
    FlowPrior,
    LearnedNormalPrior,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
    UniformSpherePrior,
    VampPrior,
)
from .semisupervised import SemiSupervisedVAE, fit_semisupervised, split_labelled
from .train import History, TrainingDivergedError, fit
from .vae import VAE

__version__ = "0.1.0"

__all__ = [
    "IWAE",
    "MLP",
    "OBJECTIVES",
    "VAE",
    "BernoulliLikelihood",
    "BetaELBO",
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
    "History",
    "IAFGuide",
    "LearnedNormalPrior",
    "Likelihood",
    "MixtureOfGaussiansPrior",
    "NormalLikelihood",
    "PosteriorCollapseWarning",
    "PowerSphericalGuide",
    "ScoreFunctionELBO",
    "SemiSupervisedVAE",
    "StandardNormalPrior",
    "TrainingDivergedError",
    "UniformSpherePrior",
    "VampPrior",
    "bayesian_p_values",
    "binarize",
    "condition_on_labels",
    "conditional_vae",
    "elbo_terms",
    "evaluate",
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
    "save_checkpoint",
    "split_labelled",
]

"""pyro-vae: variational autoencoders as Pyro probabilistic programs.

The generative model and the amortized guide are Pyro functions assembled from plug-in
parts (prior, likelihood, guide); :func:`fit` trains any model/guide pair that follows the
site conventions (observed ``"x"``, latent ``"z"``, labels ``"y"``, plate ``"data"``).
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .data import (
    DynamicBinarization,
    binarize,
    load_binarized_mnist,
    load_bundled_mnist,
    load_mnist,
    load_tensor_file,
    read_idx,
)
from .evaluate import elbo_terms
from .guides import DiagonalNormalGuide
from .likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Likelihood,
    NormalLikelihood,
)
from .nn import MLP, ConvDecoder, ConvEncoder
from .objectives import OBJECTIVES, make_objective
from .priors import StandardNormalPrior
from .train import History, TrainingDivergedError, fit
from .vae import VAE

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "OBJECTIVES",
    "VAE",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "ConvDecoder",
    "ConvEncoder",
    "DiagonalNormalGuide",
    "DynamicBinarization",
    "History",
    "Likelihood",
    "NormalLikelihood",
    "StandardNormalPrior",
    "TrainingDivergedError",
    "binarize",
    "elbo_terms",
    "fit",
    "load_binarized_mnist",
    "load_bundled_mnist",
    "load_checkpoint",
    "load_mnist",
    "load_tensor_file",
    "make_objective",
    "read_idx",
    "save_checkpoint",
]

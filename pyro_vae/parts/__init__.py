"""Plug-in parts: priors, likelihoods and guides (plus their networks and distributions).

Importing this package registers every built-in part; :func:`registered` lists them by
kind and name, and :func:`get_part` looks one up.
"""

from pyro_vae.parts import guides, likelihoods, priors
from pyro_vae.parts.registry import BuildSpec, Option, Part, get_part, part_options, registered

__all__ = [
    "BuildSpec",
    "Option",
    "Part",
    "get_part",
    "guides",
    "likelihoods",
    "part_options",
    "priors",
    "registered",
]

"""The prior registry: one entry per kind of prior (``registry.py``), one module per kind.

Importing the package registers the built-in kinds, in this order: transformer, maskgit, pixelcnn,
diffusion (the flow objective is an option of diffusion). A new kind is one module that calls
``register_prior(PriorKind(...))``, one import line below, and its test.
"""

from medgen_cli.priors.registry import (
    PriorKind,
    names_where,
    prior_kind,
    prior_kinds,
    prior_names,
    register_prior,
    unregister_prior,
)
from medgen_cli.priors import transformer, maskgit, pixelcnn, diffusion  # noqa: E402,F401  (registers the kinds)

__all__ = ["PriorKind", "names_where", "prior_kind", "prior_kinds", "prior_names", "register_prior",
           "unregister_prior"]

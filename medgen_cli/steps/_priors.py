"""Moved: priors load through ``medgen_cli.loaders.prior``, latents and lineage through ``medgen_cli.loaders.latents``.
Kept for the callers outside this package's steps (tests/io, benchmarks) until they import from there."""

from ..loaders.latents import prior_lineage  # noqa: F401
from ..loaders.prior import load_prior  # noqa: F401

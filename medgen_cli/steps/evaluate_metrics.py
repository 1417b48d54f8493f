"""Moved: the evaluation computations live in `medgen_cli.metrics` (``items``, ``features``, ``nearest``).
These re-exports keep the importers outside the evaluate step working (steps/export.py, benchmarks/, examples/)."""

from ..metrics.features import batches, reconstruct_items  # noqa: F401 - steps/export.py, benchmarks/bench_samplers.py
from ..metrics.items import item_metrics  # noqa: F401 - benchmarks/, examples/04_ct_superres/trilinear.py

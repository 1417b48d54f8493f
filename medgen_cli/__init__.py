"""medgen: train generative models of medical images from the command line.

The package is a library first: every subcommand of the ``medgen`` app is a thin wrapper over
``medgen_cli.steps.<step>.run(settings, out)``, which can be called from Python directly.
"""

__version__ = "0.1.0"

import os as _os

# Idle OpenMP threads that spin (libgomp's default) take the CPU a busy neighbour needs: training slowed
# 3.5-7x beside one busy process. Sleeping waits cost little at convolution sizes. This must run before
# torch loads OpenMP; an explicit setting wins. See benchmarks/bench_contention.py.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

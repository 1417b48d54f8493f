"""medgen: train generative models of medical images from the command line.

The package is a library first: every subcommand of the ``medgen`` app is a thin wrapper over
``medgen_cli.steps.<step>.run(settings, out)``, which can be called from Python directly.
"""

__version__ = "0.1.0"

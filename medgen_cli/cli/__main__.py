"""``python -m medgen_cli.cli`` (e.g. under ``torchrun ... -m medgen_cli.cli train-ae ...``)."""

from medgen_cli.cli import main

if __name__ == "__main__":
    main()

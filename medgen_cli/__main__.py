"""``python -m medgen_cli``: the ``medgen`` command line."""

from medgen_cli.cli import main

if __name__ == "__main__":
    main()

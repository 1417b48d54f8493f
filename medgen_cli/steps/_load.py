"""Moved to `medgen_cli.loaders.autoencoder`; kept for the steps that still import it from here."""

from ..loaders.autoencoder import MODEL_FILE, MODEL_JSON, load_autoencoder  # noqa: F401

"""Typed records of artefact payloads (``model.json``, manifest summaries) and the loaders that rebuild
models and open stores from an artefact alone; they sit beside the artefact contract (``artefacts.py``)."""

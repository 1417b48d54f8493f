"""Typed records of artefact payloads (``model.json``, manifest summaries) and the loaders that rebuild
models and open stores from an artefact alone; they sit beside the artefact contract (``artefacts.py``)."""

MODEL_FILE = "model.safetensors"  # a trained model's weights (safetensors: nothing is unpickled)
MODEL_JSON = "model.json"  # how to rebuild it: kind, typed config, ... (the records in this package)

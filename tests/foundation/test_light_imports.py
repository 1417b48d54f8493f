"""The CLI, the settings and `medgen config show|validate` load without torch (0.4-0.6 s instead of 3-4 s): the
registries they read (autoencoders, quantisers, priors, the sampler catalogue) import their networks on first use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import medgen_cli

CODE = """
import sys
from typer.testing import CliRunner
from medgen_cli.cli import app
from medgen_cli.settings import SampleSettings, TrainAESettings, TrainPriorSettings

for kind in ("transformer", "maskgit", "pixelcnn", "diffusion"):
    TrainPriorSettings.model_validate({"prior": {"kind": kind}})
TrainPriorSettings.model_validate({"prior": {"kind": "diffusion"}, "diffusion": {"objective": "flow"}})
SampleSettings.model_validate({"sampler": {"scheduler": "dpmpp_2m"}})
TrainAESettings.model_validate({"model": {"kind": "vqvae2"}})
TrainAESettings.model_validate({"model": {"kind": "vqvae", "quantizer": "fsq"}})
for step in ("preprocess", "train-ae", "encode-latents", "train-prior", "sample", "evaluate", "export"):
    result = CliRunner().invoke(app, ["config", "show", step])
    assert result.exit_code == 0, (step, result.output)
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""


def test_settings_and_config_show_do_not_import_torch():
    env = {**os.environ, "PYTHONPATH": str(Path(medgen_cli.__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_unknown_kinds_and_samplers_still_list_the_registries():
    import pytest

    from medgen_cli.settings.sources import SettingsError
    from medgen_cli.settings import SampleSettings, TrainPriorSettings, load_settings

    with pytest.raises(SettingsError, match="registered kinds: transformer, maskgit, pixelcnn, diffusion"):
        load_settings(TrainPriorSettings, None, ["prior.kind=unigram"], {})
    with pytest.raises(SettingsError, match="one of 'ddim', 'ddpm', 'dpmpp_2m', 'flow_euler', 'flow_heun'"):
        load_settings(SampleSettings, None, ["sampler.scheduler=euler"], {})

"""encode-latents and export set threads and device up through `medgen_cli.runtime.inference_device`: a
device that is not there is a usage error in one sentence, a plain image export needs no device, and
``runtime.threads`` reaches torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medgen_cli.errors import UsageError
from medgen_cli.settings import EncodeSettings, load_settings
from medgen_cli.settings.evaluate import ExportSettings
from medgen_cli.steps import encode_latents, export

LEGACY = Path(__file__).parents[1] / "fixtures" / "artefacts_v0.1.0"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def export_settings(*overrides: str, **flags) -> ExportSettings:
    return load_settings(ExportSettings, None, list(overrides), {k: str(v) if isinstance(v, Path) else v
                                                                 for k, v in flags.items()})


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@no_cuda
def test_encode_latents_refuses_a_missing_device_before_reading_anything(tmp_path):
    settings = load_settings(EncodeSettings, None, [f"ae={tmp_path / 'no_ae'}", f"data={tmp_path / 'no_data'}",
                                                    "runtime.device=cuda"])
    with pytest.raises(UsageError, match="no CUDA device"):
        encode_latents.run(settings, tmp_path / "lat")
    assert not (tmp_path / "lat").exists() and not (tmp_path / "lat.partial").exists()


@no_cuda
def test_export_needs_a_device_only_to_decode(tmp_path, torch_threads):
    result = export.run(export_settings("runtime.device=cuda", "runtime.threads=1", source=LEGACY / "prep",
                                        format="nifti", store="drr", items="ct0_ap"), tmp_path / "nii")
    assert result.summary["items"] == 1 and torch.get_num_threads() == 1
    with pytest.raises(UsageError, match="no CUDA device"):
        export.run(export_settings("runtime.device=cuda", source=LEGACY / "lat_vq", format="nifti", decode=True),
                   tmp_path / "dec")


def test_model_export_applies_threads(tmp_path, torch_threads):
    torch.set_num_threads(2)
    export.run(export_settings("runtime.threads=1", source=LEGACY / "ae_vq", format="safetensors"), tmp_path / "st")
    assert torch.get_num_threads() == 1

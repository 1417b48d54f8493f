"""Typed autoencoder configs and the autoencoder / quantiser registries: a model built from its typed
config is the model built from keywords, old model.json configs validate and dump back unchanged,
unknown names list the registry, and settings validate kinds and quantisers without torch."""

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import medgen_cli
from medgen_cli.models import KLVAE, VQVAE, VQVAE2, build_autoencoder
from medgen_cli.models.configs import KLVAEConfig, VQVAE2Config, VQVAEConfig
from medgen_cli.models.quantization import QUANTIZERS, quantizer_spec, resolve_codebook
from medgen_cli.models.registry import AUTOENCODERS, autoencoder_kind, config_from_dict
from medgen_cli.settings import SettingsError, load_settings
from medgen_cli.settings.train import AE_KINDS, VQ_KINDS, AutoencoderSettings, TrainAESettings

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "artefacts_v0.1.0"
CASES = {
    "vqvae": (VQVAE, VQVAEConfig, dict(channels=(8, 16), num_res_blocks=1, num_groups=4, embedding_dim=4,
                                       num_embeddings=16, in_channels=2)),
    "vqvae2": (VQVAE2, VQVAE2Config, dict(channels=(8, 8), top_channels=(8,), num_res_blocks=(0, 2), num_groups=4,
                                          quantizer="fsq", fsq_levels=(5, 5, 3), layout="strided", mid_blocks=0)),
    "klvae": (KLVAE, KLVAEConfig, dict(channels=(8, 16), num_groups=4, latent_channels=4, downsample=((2, 1), (2, 2)))),
}


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_typed_config_and_keywords_build_the_same_model(kind):
    cls, config_cls, kwargs = CASES[kind]
    torch.manual_seed(0)
    by_keywords = cls(2, **kwargs)
    torch.manual_seed(0)
    by_config = cls(2, config_cls(**kwargs))
    a, b = _weights(by_keywords), _weights(by_config)
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
    assert by_config.config() == by_keywords.config() == by_config.typed_config.model_dump(mode="json")
    rebuilt = build_autoencoder(**json.loads(json.dumps(by_config.config())))
    assert type(rebuilt) is cls and rebuilt.typed_config == by_config.typed_config


@pytest.mark.parametrize("name", ["ae_vq", "ae_kl"])
def test_old_model_json_validates_and_dumps_back_unchanged(name):
    info = json.loads((FIXTURE / name / "model.json").read_text())
    config = config_from_dict(info["config"])
    assert type(config) is AUTOENCODERS[info["kind"]].config_cls
    dumped = config.model_dump(mode="json")
    assert dumped == info["config"] and list(dumped) == list(info["config"])  # same keys, values and order
    model = autoencoder_kind(config.kind).model_cls(config.spatial_dims, config)
    assert model.config() == info["config"]


def test_overrides_are_validated_and_configs_are_frozen():
    with pytest.raises(ValueError, match=r"num_embedings.*allowed: \[.*'num_embeddings'"):
        VQVAE(2, num_embedings=4)
    with pytest.raises(ValueError, match="spatial_dims=2"):
        VQVAE(3, VQVAEConfig(spatial_dims=2))
    with pytest.raises(ValueError, match="config must be a VQVAEConfig"):
        VQVAE(2, KLVAEConfig())
    with pytest.raises(ValueError, match="kind='klvae' is not built from VQVAEConfig"):
        VQVAEConfig(kind="klvae")
    config = VQVAEConfig(channels=(8,), num_groups=4)
    with pytest.raises(ValidationError):
        config.channels = (16,)
    with pytest.raises(ValidationError):
        VQVAEConfig(chanels=(8,))
    model = VQVAE(2, config, num_groups=2)  # an override replaces one field of the given config
    assert model.config()["num_groups"] == 2 and model.config()["channels"] == [8]


def test_registry_lists_kinds_and_drives_settings():
    with pytest.raises(ValueError, match=r"kind='vae' must be one of \['klvae', 'vqgan', 'vqvae', 'vqvae2'\]"):
        autoencoder_kind("vae")
    assert AE_KINDS == tuple(AUTOENCODERS) and set(VQ_KINDS) == set(AE_KINDS) - {"klvae"}
    assert typing.get_args(AutoencoderSettings.model_fields["kind"].annotation) == AE_KINDS
    assert typing.get_args(AutoencoderSettings.model_fields["quantizer"].annotation) == tuple(QUANTIZERS)
    with pytest.raises(SettingsError, match="'model.kind' = 'vae'.*'vqvae', 'vqvae2', 'vqgan' or 'klvae'"):
        load_settings(TrainAESettings, None, ["model.kind=vae"])
    gan = build_autoencoder("vqgan", 2, channels=(8,), num_groups=4)
    assert gan.kind == "vqgan" and gan.config()["recon_loss"] == "l1"  # the kind's default
    assert build_autoencoder("vqgan", 2, channels=(8,), num_groups=4, recon_loss="mse").config()["recon_loss"] == "mse"
    s = TrainAESettings()
    assert s.adversarial.active("vqgan") and not s.adversarial.active("klvae")


@pytest.mark.parametrize("kind", ["vqvae", "vqgan", "vqvae2", "klvae"])
def test_settings_produce_the_typed_config_the_model_records(kind):
    extra = {"top_channels": (16,)} if kind == "vqvae2" else {}
    section = AutoencoderSettings(kind=kind, channels=(8, 16), num_groups=4, **extra)
    config = section.autoencoder_config(in_channels=1, spatial_dims=2)
    assert type(config) is autoencoder_kind(kind).config_cls and config.kind == kind
    torch.manual_seed(0)
    from_config = build_autoencoder(kind, 2, config)
    torch.manual_seed(0)
    from_kwargs = build_autoencoder(kind, 2, **section.model_kwargs(1))
    a, b = _weights(from_config), _weights(from_kwargs)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert from_config.config() == from_kwargs.config()
    expected = {"vqvae": 4, "vqgan": 4, "vqvae2": 8, "klvae": 2}[kind]  # klvae: none after the last level
    assert section.factors(2) == (expected, expected)


def test_quantiser_registry_resolves_checks_and_builds():
    with pytest.raises(ValueError, match=r"quantizer='pq' must be one of \('vq', 'fsq', 'lfq'\)"):
        quantizer_spec("pq")
    assert resolve_codebook("fsq", None, None, (5, 5, 3)) == (3, 75, (5, 5, 3))
    assert QUANTIZERS["lfq"].sizes(None, 1024, None) == (10, 1024)
    assert QUANTIZERS["fsq"].config_sizes(64, 512, (8, 5)) == {"embedding_dim": None, "num_embeddings": None,
                                                               "fsq_levels": (8, 5)}
    config = VQVAEConfig(quantizer="lfq", num_embeddings=16, entropy_weight=0.3)
    lfq = QUANTIZERS["lfq"].build(4, 16, config)
    assert (lfq.embedding_dim, lfq.num_embeddings, lfq.entropy_weight) == (4, 16, 0.3)
    with pytest.raises(ValueError, match="vq_gradient='rotation' only applies to quantizer='vq', not 'fsq'"):
        VQVAE(2, channels=(8,), num_groups=4, quantizer="fsq", vq_gradient="rotation")
    with pytest.raises(ValueError, match="fsq_levels=\\[5, 5\\] only applies to quantizer='fsq', not 'lfq'"):
        resolve_codebook("lfq", None, None, (5, 5))


def test_settings_kinds_and_quantisers_load_without_torch():
    code = ("import sys; import medgen_cli.cli; from medgen_cli.settings import TrainAESettings; "
            "from medgen_cli.models.registry import AUTOENCODERS; "
            "TrainAESettings.model_validate({'model': {'kind': 'vqvae', 'quantizer': 'fsq'}}).model.autoencoder_config(); "
            "TrainAESettings.model_validate({'model': {'kind': 'vqvae2'}}).model.factors(3); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    env = {**os.environ, "PYTHONPATH": str(Path(medgen_cli.__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr

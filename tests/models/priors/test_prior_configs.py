"""Typed prior configs: one frozen object built by the registry, taken by the constructor and stored as
``model.json``'s ``config``; the VQ-VAE-2 pair is a module of its own with the keys it always had."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from medgen_cli.models.priors import (
    GatedPixelCNN,
    GatedPixelCNNConfig,
    MaskGITPrior,
    MaskGITPriorConfig,
    TransformerPrior,
    TransformerPriorConfig,
    TwoLevelPixelCNN,
    UNetPrior,
    UNetPriorConfig,
)
from medgen_cli.sampling import two_level_generate

CASES = [
    (TransformerPrior, TransformerPriorConfig(num_embeddings=8, grid_shape=[2, 3], dim=16, depth=1, num_heads=2,
                                              cond_sources=[{"num_embeddings": 4, "grid_shape": [2, 2]}])),
    (MaskGITPrior, MaskGITPriorConfig(num_embeddings=8, grid_shape=[2, 3], dim=16, depth=1, num_heads=2, num_classes=3)),
    (GatedPixelCNN, GatedPixelCNNConfig(num_embeddings=6, hidden_channels=8, num_layers=3, attention_layers=[2, 0],
                                        num_heads=2)),
    (UNetPrior, UNetPriorConfig(spatial_dims=2, in_channels=2, base_channels=8, channel_mults=[1, 2], num_res_blocks=1,
                                num_groups=4, num_heads=2)),
]


@pytest.mark.parametrize("cls, config", CASES, ids=[c[0].__name__ for c in CASES])
def test_a_config_builds_what_its_keywords_build(cls, config):
    torch.manual_seed(0)
    typed = cls(config)
    torch.manual_seed(0)
    keywords = cls(**config.model_dump())
    assert typed.config() == keywords.config() == json.loads(json.dumps(config.config()))
    for (k, a), (_, b) in zip(typed.state_dict().items(), keywords.state_dict().items()):
        assert torch.equal(a, b), k  # same modules, same random initialisation order
    with pytest.raises(ValidationError):
        config.model_copy().__class__(**config.model_dump(), bogus=1)  # extra keys are refused
    with pytest.raises(ValidationError):
        config.dim = 1  # frozen


def test_normalised_fields():
    assert GatedPixelCNNConfig(num_embeddings=3, attention_layers=[3, 1]).attention_layers == [1, 3]
    assert UNetPriorConfig(spatial_dims=3, in_channels=5).out_channels == 5
    assert UNetPrior(2, UNetPriorConfig(spatial_dims=3, in_channels=1, channel_mults=[1])).config()["spatial_dims"] == 2
    with pytest.raises(TypeError, match="both by position and by keyword"):
        TransformerPrior(4, (2, 2), num_embeddings=4)


def test_the_two_level_pixelcnn_keeps_its_keys_config_and_loss():
    top = GatedPixelCNNConfig(num_embeddings=5, hidden_channels=8, num_layers=2, attention_layers=[1], num_heads=2)
    bottom = GatedPixelCNNConfig(num_embeddings=5, hidden_channels=8, num_layers=2, cond_num_embeddings=5)
    torch.manual_seed(0)
    pair = TwoLevelPixelCNN(top, bottom)
    assert isinstance(pair, torch.nn.ModuleDict) and {k.split(".")[0] for k in pair.state_dict()} == {"top", "bottom"}
    again = TwoLevelPixelCNN(**json.loads(json.dumps(pair.config())))
    again.load_state_dict(pair.state_dict())
    assert again.config() == pair.config() == {"top": top.config(), "bottom": bottom.config()}
    codes, up = torch.randint(0, 5, (2, 4, 4)), torch.randint(0, 5, (2, 2, 2))
    out = pair.loss(codes, up)
    t, b = pair["top"].loss(up), pair["bottom"].loss(codes, condition=up)
    assert torch.allclose(out["loss"], t["loss"] + b["loss"])
    assert torch.allclose(out["bits_per_token"], (t["bits_per_token"] * 4 + b["bits_per_token"] * 16) / 20)
    drawn = two_level_generate(pair.eval(), (2, 2, 2), (2, 4, 4), generator=torch.Generator().manual_seed(1))
    assert drawn["top"].shape == (2, 2, 2) and drawn["main"].shape == (2, 4, 4)

"""TrainAESettings: defaults render, cross-field rules fail early with the key and value."""

import pytest

from medgen_cli.settings import STEP_SETTINGS, SettingsError, load_settings, settings_to_yaml
from medgen_cli.settings.train import TrainAESettings


def test_registered_and_round_trips():
    assert STEP_SETTINGS["train-ae"] is TrainAESettings
    text = settings_to_yaml(TrainAESettings())
    assert "# Weight of 1 - MS-SSIM" in text
    dumped = TrainAESettings().model_dump(mode="json")
    assert TrainAESettings.model_validate(dumped) == TrainAESettings()  # resolved settings load back


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.kl_weight=0.1"], "model.kl_weight does not apply to model.kind = 'vqvae'"),
        (["model.kind=klvae", "model.num_embeddings=64"], "model.num_embeddings does not apply"),
        (["model.num_groups=5"], "model.num_groups = 5 must divide"),
        (["data.patch_size=18,18"], "not divisible by the model's downsampling factor [4, 4]"),
        (["model.downsample=2"], "needs one factor per level"),
        (["model.attention_levels=3"], "must index levels 0..1"),
        (["model.num_res_blocks=0,0"], "model.num_res_blocks = [0, 0] must be one integer >= 1 or one integer >= 0 per level"),
        (["model.num_res_blocks=1,1,1"], "(2 levels, not all 0)"),
        (["loss.l1=0"], "all 0"),
        (["optim.betas=0.9"], "'optim.betas'"),
        (["train.select=worst"], "'train.select' = 'worst'"),
        (["model.quantizer=fsq", "model.embedding_dim=4"], "model.embedding_dim does not apply to model.quantizer = 'fsq'"),
        (["model.quantizer=fsq", "model.fsq_levels=8,2"], "model.fsq_levels = [8, 2] must all be >= 3"),
        (["model.quantizer=fsq", "model.fsq_levels=8,8,8,8,8,8"], "262144 codes, more than the 32768"),
        (["model.quantizer=lfq", "model.num_embeddings=1000"], "must be a power of two for quantizer lfq"),
        (["model.quantizer=lfq", "model.num_embeddings=65536"], "65536 codes, more than the 32768"),
        (["model.quantizer=lfq", "model.vq_gradient=rotation"], "model.vq_gradient does not apply to model.quantizer = 'lfq'"),
        (["model.entropy_weight=0.2"], "model.entropy_weight does not apply to model.quantizer = 'vq'"),
        (["model.kind=klvae", "model.quantizer=fsq"], "model.quantizer does not apply to model.kind = 'klvae'"),
        (["model.layout=diagonal"], "'model.layout' = 'diagonal'"),
        (["train.channels_last=maybe"], "'train.channels_last' = 'maybe'"),
        (["model.res_kernels=3,2"], "model.res_kernels = [3, 2] must be two odd kernel sizes"),
    ],
)
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(SettingsError) as err:
        load_settings(TrainAESettings, None, overrides)
    assert message in str(err.value)


def test_per_axis_downsampling_and_model_kwargs():
    s = load_settings(TrainAESettings, None, ["model.downsample=[[2,2,1],[2,2,2]]", "data.patch_size=16,16,8"])
    assert s.model.factors(3) == (4, 4, 2)
    assert s.model.model_kwargs(1)["downsample"] == [[2, 2, 1], [2, 2, 2]]
    assert s.adversarial.active("vqgan") and not s.adversarial.active("vqvae")
    assert s.model.model_kwargs(1)["num_res_blocks"] == 2  # one value: every level
    cheap = load_settings(TrainAESettings, None, ["model.num_res_blocks=0,2"])
    assert cheap.model.model_kwargs(1)["num_res_blocks"] == [0, 2]


def test_defaults_are_the_fast_layout_and_quantisers_map_to_model_kwargs():
    s = TrainAESettings()
    kwargs = s.model.model_kwargs(1)
    assert (kwargs["layout"], kwargs["mid_blocks"], kwargs["quantizer"], kwargs["res_kernels"]) == ("strided", 0, "vq", [3, 1])
    assert s.train.precision == "auto" and s.train.channels_last is None and not s.train.compile
    fsq = load_settings(TrainAESettings, None, ["model.quantizer=fsq", "model.fsq_levels=8,5,5"]).model
    assert fsq.codebook_size() == 200 and fsq.code_dim() == 3
    assert fsq.model_kwargs(1)["fsq_levels"] == [8, 5, 5] and fsq.model_kwargs(1)["embedding_dim"] is None
    lfq = load_settings(TrainAESettings, None, ["model.quantizer=lfq", "model.num_embeddings=1024"]).model
    assert (lfq.codebook_size(), lfq.code_dim(), lfq.model_kwargs(1)["num_embeddings"]) == (1024, 10, 1024)
    old = load_settings(TrainAESettings, None, ["model.layout=full", "model.mid_blocks=2"]).model.model_kwargs(1)
    assert (old["layout"], old["mid_blocks"]) == ("full", 2)

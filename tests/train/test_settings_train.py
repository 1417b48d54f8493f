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

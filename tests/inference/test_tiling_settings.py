"""The ``tiling`` settings section of encode-latents, sample, evaluate and export, and its hand-over to the library."""

from __future__ import annotations

import pytest

from medgen_cli.inference import TilingOptions
from medgen_cli.settings import EncodeSettings, EvaluateSettings, ExportSettings, SampleSettings, SettingsError, load_settings


@pytest.mark.parametrize("step", [EncodeSettings, SampleSettings, EvaluateSettings, ExportSettings])
def test_tiling_settings_reach_the_tiler(step):
    s = load_settings(step, overrides=["tiling.max_gib=2.5", "tiling.tile_size=128,128,64", "tiling.halo=16",
                                       "tiling.norm=tile"])
    options = TilingOptions(**s.tiling.options())
    assert options == TilingOptions(mode="auto", max_gib=2.5, tile_size=(128, 128, 64), halo=(16,), norm_passes=1)
    assert TilingOptions(**step().tiling.options()) == TilingOptions()  # defaults: auto, exact, automatic budget


@pytest.mark.parametrize("override, key", [("tiling.max_gib=0", "tiling.max_gib"), ("tiling.tile_size=0", "tiling.tile_size"),
                                           ("tiling.mode=on", "tiling.mode"), ("tiling.norm=fast", "tiling.norm"),
                                           ("tiling.halo=1,2,3,4", "tiling.halo"), ("tiling.tiles=4", "tiling.tiles")])
def test_bad_tiling_settings_name_the_key(override, key):
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        load_settings(EncodeSettings, overrides=[override])

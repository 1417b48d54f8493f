"""The derive-mode registry: spec parsing, the modes each accepts, masks, dispatch by the step."""

from __future__ import annotations

import numpy as np
import pytest

from medgen_cli.io.masks import mask_store_name
from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.preprocess import derive
from medgen_cli.preprocess.derive_modes import (
    DERIVE_MODES,
    DeriveContext,
    DeriveMode,
    check_spec,
    listing,
    parse_spec,
    register_derive_mode,
    store_name,
)
from medgen_cli.settings import PreprocessSettings, SettingsError, load_settings
from medgen_cli.steps import _preprocess_source

WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)


def ct(shape=(12, 10, 8), seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1000, 1000, shape).astype(np.float32), ImageMeta(modality="CT", subject="p1",
                                                                         intensity=IntensityMapping(unit="HU"))


def context(s: PreprocessSettings, item_id="ct00", seed=7) -> DeriveContext:
    return DeriveContext(item_id, seed, s.mode.kind, s.mode.axis, tuple(s.intensity.output_range), WINDOW, s.derive)


def test_specs_parse_against_the_registry():
    assert listing() == "drr, lowdose, downsample:F"
    assert parse_spec("drr")[0].name == "drr" and parse_spec("lowdose")[1] is None
    mode, factors = parse_spec("downsample:2,2,1")
    assert mode.name == "downsample" and factors == (2, 2, 1) and store_name("downsample:2,2,1") == "downsample2x2x1"
    for bad in ("blur", "downsample", "downsample:x", "downsample:1,2,3,4", "drr:2"):
        with pytest.raises(ValueError, match=rf"unknown derived output '{bad}'; registered: drr, lowdose, downsample:F"):
            parse_spec(bad)


def test_modes_accepted_and_the_slicing_axis():
    check_spec("drr", "volume", 2)
    with pytest.raises(ValueError, match="needs mode.kind volume"):
        check_spec("drr", "slices", 2)
    check_spec("downsample:2", "sequence", 2)  # one factor: in-plane only
    check_spec("downsample:2,2,1", "slices", 2)
    with pytest.raises(ValueError, match=r"must keep the slicing axis \(mode.axis = 0\)"):
        check_spec("downsample:2,2,1", "slices", 0)
    check_spec("downsample:2,2,2", "volume", 2)


def test_settings_read_the_registry():
    with pytest.raises(SettingsError, match="registered: drr, lowdose, downsample:F"):
        load_settings(PreprocessSettings, None, ["derive.outputs=[blur]"])
    with pytest.raises(SettingsError, match="slicing axis"):
        load_settings(PreprocessSettings, None, ["mode.kind=slices", "derive.outputs=['downsample:2,2,2']"])
    description = PreprocessSettings.model_fields["derive"].annotation.model_fields["outputs"].description
    assert all(m.usage in description for m in DERIVE_MODES.values())


@pytest.mark.parametrize("name", sorted(DERIVE_MODES))
def test_declared_masks_agree_with_the_mask_stores(name):
    """The mask store the artefact layout pairs with each derived store is the one its mode declares."""
    mode = DERIVE_MODES[name]
    store = store_name(mode.usage.replace(":F", ":2"))
    expected = {"none": None, "main": "masks", "own": f"masks_{store}"}[mode.masks]
    assert mask_store_name(store) == expected


def test_built_in_modes_make_what_the_image_functions_make():
    s = load_settings(PreprocessSettings, None, ["intensity.window=0,2000", "derive.drr_max_depth=4"])
    arr, meta = ct()
    ctx = context(s)
    (item,) = DERIVE_MODES["lowdose"].make(arr, meta, None, ctx)
    ref, ref_meta = derive.lowdose(arr, meta, dose_fraction=0.25, sigma_full=10.0, seed=7)
    assert item[0] == "ct00" and item[2].intensity == WINDOW and item[2].attrs == ref_meta.attrs
    np.testing.assert_array_equal(item[1], WINDOW.to_stored(ref))
    (item,) = DERIVE_MODES["downsample"].make(arr, meta, (2,), ctx)
    np.testing.assert_array_equal(item[1], WINDOW.to_stored(derive.downsample(arr, meta, 2)[0]))
    views = DERIVE_MODES["drr"].make(arr, meta, None, ctx)
    assert [v[0] for v in views] == ["ct00_ap", "ct00_lateral"]
    depth, _ = derive.drr(arr, meta, "ap", output="log")
    assert views[0][2].intensity.in_high == 4.0
    np.testing.assert_allclose(views[0][1], np.clip(depth / 4.0, 0, 1) * 2 - 1, atol=1e-6)


def test_a_registered_toy_mode_is_validated_and_dispatched():
    """One registry entry: the settings accept its spec and the step derives its store, with no other edit."""
    def flipped(arr, meta, params, ctx):
        return ctx.stored(np.flip(arr, axis=0).copy(), meta)

    register_derive_mode(DeriveMode("flip", flipped, "mirrored copy"))
    try:
        s = load_settings(PreprocessSettings, None, ["intensity.window=0,2000", "derive.outputs=[flip, lowdose]"])
        arr, meta = ct()
        out = _preprocess_source._derived(arr, meta, s, "ct00", WINDOW)
        assert list(out) == ["flip", "lowdose"]
        np.testing.assert_array_equal(out["flip"][0][1], WINDOW.to_stored(arr[::-1]))
        assert {"fn": "derive.flip", "spec": "flip"} in _preprocess_source.pipeline_description(s)
    finally:
        DERIVE_MODES.pop("flip")
    with pytest.raises(SettingsError, match="unknown derived output 'flip'"):
        load_settings(PreprocessSettings, None, ["derive.outputs=[flip]"])

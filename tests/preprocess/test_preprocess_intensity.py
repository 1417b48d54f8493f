"""Intensity mappings: hand-computed windows, exact round trips to physical units, the HU check."""

from __future__ import annotations

import numpy as np
import pytest

from medgen_cli.meta import IntensityMapping
from medgen_cli.preprocess import intensity as I


@pytest.fixture
def ct(make_meta):
    rng = np.random.default_rng(0)
    arr = rng.uniform(-1024, 3000, size=(12, 10, 8)).astype(np.float32)
    arr[:4] = -1000.0  # air
    return arr, make_meta(modality="CT", intensity=IntensityMapping(unit="HU", in_low=0, in_high=1))


def test_parse_window():
    assert I.parse_window("lung") == (-600.0, 1500.0)
    assert I.parse_window("Soft-Tissue") == (40.0, 400.0)
    assert I.parse_window("40,400") == (40.0, 400.0)
    assert I.parse_window(" -600 , 1500 ") == (-600.0, 1500.0)
    for bad in ("liver", "40", "40,0", "40,-5", "a,b", "1,2,3"):
        with pytest.raises(ValueError, match="window"):
            I.parse_window(bad)


def test_window_by_hand(make_meta):
    # Soft tissue: C=40, W=400 -> [-160, 240] HU onto [-1, 1]: x -> (x + 160) / 200 - 1.
    hu = np.array([-1000, -160, -60, 40, 140, 240, 1000], dtype=np.float32)
    out, meta = I.window(hu, make_meta(modality="CT"), 40, 400)
    np.testing.assert_allclose(out, [-1, -1, -0.5, 0, 0.5, 1, 1], atol=1e-6)
    m = meta.intensity
    assert (m.method, m.unit, m.in_low, m.in_high, m.out_low, m.out_high, m.clip) == (
        "window", "HU", -160.0, 240.0, -1.0, 1.0, True)
    # Brain C=40, W=80 onto [0, 1]: [0, 80] HU; 20 HU -> 0.25, 70 HU -> 0.875.
    out, _ = I.window(np.array([20.0, 70.0, -5.0]), make_meta(), 40, 80, out_range=(0, 1))
    np.testing.assert_allclose(out, [0.25, 0.875, 0.0], atol=1e-6)
    # Log: lung window [-1350, 150]; -600 HU -> log1p(750) / log1p(1500) on [0, 1].
    out, _ = I.window(np.array([-600.0]), make_meta(), -600, 1500, out_range=(0, 1), transform="log")
    np.testing.assert_allclose(out, [np.log1p(750) / np.log1p(1500)], rtol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, m: I.window(a, m, 40, 400),
        lambda a, m: I.window(a, m, -600, 1500, out_range=(0, 1), transform="log"),
        lambda a, m: I.percentile_normalize(a, m),
        lambda a, m: I.percentile_normalize(a, m, 1, 99, out_range=(0, 1), transform="log"),
        lambda a, m: I.minmax(a, m),
        lambda a, m: I.zscore(a, m),
        lambda a, m: I.zscore(a, m, mask=a > -500),
    ],
    ids=["window", "window-log", "percentile", "percentile-log", "minmax", "zscore", "zscore-mask"],
)
def test_round_trip_to_physical(ct, fn):
    arr, meta = ct
    out, m2 = fn(arr, meta)
    assert out.dtype == np.float32 and out.shape == arr.shape
    mp = m2.intensity
    expected = np.clip(arr, mp.in_low, mp.in_high) if mp.clip else arr
    back = mp.to_physical(out)
    span = (mp.in_high - mp.in_low) if mp.clip else float(np.ptp(arr))
    np.testing.assert_allclose(back, expected, rtol=1e-5, atol=2e-5 * span)
    assert m2.affine is meta.affine or np.array_equal(m2.affine, meta.affine)


def test_zscore_and_percentile_statistics(ct):
    arr, meta = ct
    out, m = I.zscore(arr, meta)
    assert abs(float(out.mean())) < 1e-5 and abs(float(out.std()) - 1) < 1e-5
    assert m.intensity.in_low == pytest.approx(float(arr.astype(np.float64).mean()), rel=1e-9)
    assert (m.intensity.out_low, m.intensity.out_high, m.intensity.clip) == (0.0, 1.0, False)
    mask = arr > -500
    out, m = I.zscore(arr, meta, mask=mask)
    assert abs(float(out[mask].mean())) < 1e-5
    out, m = I.percentile_normalize(arr, meta, 10, 90, out_range=(0, 1), mask=mask)
    lo, hi = np.percentile(arr[mask], [10, 90])
    assert (m.intensity.in_low, m.intensity.in_high) == pytest.approx((lo, hi))
    assert out.min() == 0 and out.max() == 1
    with pytest.raises(ValueError, match="mask"):
        I.zscore(arr, meta, mask=np.zeros_like(mask))
    with pytest.raises(ValueError, match="percentile"):
        I.percentile_normalize(arr, meta, 60, 40)


def test_mappings_compose(ct):
    """Windowing a z-scored array records the same mapping as windowing the HU directly."""
    arr, meta = ct
    direct, m1 = I.window(arr, meta, 40, 400)
    z, mz = I.zscore(arr, meta)
    again, m2 = I.window(z, mz, 40, 400)
    np.testing.assert_allclose(again, direct, atol=1e-4)
    assert m1.intensity == m2.intensity


def test_bad_parameters(ct):
    arr, meta = ct
    with pytest.raises(ValueError, match="out_range"):
        I.window(arr, meta, 40, 400, out_range=(1, 1))
    with pytest.raises(ValueError, match="transform"):
        I.minmax(arr, meta, transform="sqrt")


def test_constant_image_does_not_crash(make_meta):
    out, m = I.minmax(np.full((4, 4), 7.0, np.float32), make_meta())
    assert m.intensity.in_high > m.intensity.in_low and np.isfinite(out).all()


def test_looks_like_hu(ct):
    arr, _ = ct
    ok, reason = I.looks_like_hu(arr)
    assert ok, reason
    ok, reason = I.looks_like_hu(np.clip(arr, -1024, 2000) + 1024)  # no rescale intercept
    assert not ok and "air" in reason
    ok, reason = I.looks_like_hu(np.where(arr > 2000, 60000, arr))  # unscaled / wrong type
    assert not ok and "4000" in reason
    ok, _ = I.looks_like_hu(np.full((8, 8), -1000.0))  # a padded scan with lots of air is fine
    assert ok

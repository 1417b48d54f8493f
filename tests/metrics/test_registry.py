"""The registry of paired per-item metrics: order, groups, lookup errors, a toy metric end to end."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medgen_cli.errors import UsageError
from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.metrics import ItemMetric, PairContext, get_metric, item_metrics, register_metric
from medgen_cli.metrics.registry import METRICS, box_groups, unregister_metric
from medgen_cli.metrics.report import aggregate, mapping_note, metric_label, stats, table_rows, write_csv
from medgen_cli.viz.evaluation import metric_plots

WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)
BUILT_IN = ("ssim", "ssim_slicewise", "ms_ssim", "psnr", "mae", "rmse", "psnr_phys", "mae_phys", "rmse_phys")


def pair(shape=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    target = rng.uniform(-1, 1, shape).astype(np.float32)
    pred = np.clip(target + rng.normal(0, 0.1, shape), -1, 1).astype(np.float32)
    return pred, target


@pytest.fixture
def toy():
    """A toy metric (maximum absolute error, stored units) registered for one test and removed after it."""
    def max_error(p: PairContext) -> float:
        return float((p.pred - p.target).abs().max())

    metric = register_metric(ItemMetric("max_error", "error", False, max_error, "largest absolute error"))
    yield metric
    unregister_metric("max_error")
    assert "max_error" not in METRICS


def test_built_in_order_and_box_groups_are_those_of_the_outputs():
    assert tuple(METRICS)[: len(BUILT_IN)] == BUILT_IN  # the column order of items.csv
    assert box_groups() == {"similarity": ("ssim", "ssim_slicewise", "ms_ssim"), "psnr": ("psnr", "psnr_phys"),
                            "error": ("mae", "rmse"), "error_phys": ("mae_phys", "rmse_phys")}
    assert [get_metric(n).higher_is_better for n in ("ssim", "psnr", "mae", "rmse_phys")] == [True, True, False, False]
    assert [metric_label(n, "HU") for n in ("ssim", "psnr", "psnr_phys", "mae", "mae_phys")] == [
        "ssim", "psnr (dB)", "psnr_phys (dB)", "mae", "mae_phys (HU)"]


def test_unknown_and_duplicate_names_are_refused_with_the_registry():
    with pytest.raises(ValueError, match=r"unknown metric 'lpips'; registered metrics: ssim, ssim_slicewise, ms_ssim"):
        get_metric("lpips")
    with pytest.raises(ValueError, match="already registered"):
        register_metric(ItemMetric("ssim", "similarity", True, lambda p: 1.0))
    with pytest.raises(ValueError, match="unknown group 'loudness'; groups: similarity, psnr, error, error_phys"):
        register_metric(ItemMetric("loud", "loudness", True, lambda p: 1.0))
    assert "loud" not in METRICS


def test_item_metrics_against_numpy():
    """PSNR, MAE and RMSE of the registry loop equal their definitions computed here in numpy."""
    pred, target = pair()
    row = item_metrics(pred, target, ImageMeta(intensity=WINDOW), axis=2)
    assert tuple(row) == ("ssim", "ms_ssim", "psnr", "mae", "rmse", "psnr_phys", "mae_phys", "rmse_phys")  # 2D: no slice-wise
    d = pred.astype(np.float64) - target.astype(np.float64)
    assert row["mae"] == pytest.approx(np.abs(d).mean(), rel=1e-12)
    assert row["rmse"] == pytest.approx(np.sqrt((d ** 2).mean()), rel=1e-12)
    assert row["psnr"] == pytest.approx(10 * np.log10(2.0 ** 2 / (d ** 2).mean()), rel=1e-9)  # window range 2
    assert row["mae_phys"] == pytest.approx(1000 * row["mae"], rel=1e-9)  # 2 stored units = 2000 HU
    assert row["psnr_phys"] == pytest.approx(row["psnr"], rel=1e-9)
    small = item_metrics(*pair((8, 8)), ImageMeta(intensity=WINDOW), axis=2)
    assert "ssim" not in small and "ms_ssim" in small  # SSIM needs the 11-voxel window
    volume = item_metrics(*pair((12, 12, 6)), ImageMeta(intensity=WINDOW), axis=2)
    assert "ssim_slicewise" in volume and "ssim" not in volume
    with pytest.raises(UsageError, match=r"item x: shapes differ"):
        item_metrics(pred[:8], target, ImageMeta(intensity=WINDOW), axis=2, item_id="x")


def test_a_registered_toy_metric_reaches_every_output(toy, tmp_path):
    """One registry line: the metric is in item_metrics' rows, the aggregates, the CSV, the table and its group's box plot."""
    rows = []
    for k in range(3):
        pred, target = pair(seed=k)
        row = item_metrics(pred, target, ImageMeta(intensity=WINDOW), axis=2)
        assert tuple(row)[-1] == "max_error"  # after the built-in metrics
        assert row["max_error"] == pytest.approx(np.abs(pred.astype(np.float64) - target).max())
        rows.append({"item": f"i{k}", "subject": f"s{k}", **row})
    agg = aggregate(rows)
    assert agg["max_error"]["n"] == 3
    header = write_csv(tmp_path / "items.csv", rows).read_text().splitlines()[0]
    assert header.endswith(",rmse_phys,max_error")
    section, label, value = table_rows("conditional", agg, "HU")[-1]
    assert (section, label) == ("conditional", "max_error") and value.startswith(f"{agg['max_error']['mean']:.4g} ± ")
    assert box_groups()["error"] == ("mae", "rmse", "max_error")
    names = {p.name for p in metric_plots(tmp_path, rows, "HU")}
    assert {"hist_max_error.png", "box_error.png"} <= names


def test_stats_count_non_finite_values_apart():
    s = stats([1.0, 3.0, float("inf")])
    assert (s["mean"], s["median"], s["n"], s["n_nonfinite"]) == (2.0, 2.0, 3, 1)
    assert stats([float("inf")])["mean"] is None


def test_mapping_note_levels():
    per_subject = [IntensityMapping(method="percentile", unit="a.u.", in_low=lo, in_high=hi, clip=True)
                   for lo, hi in ((3.0, 812.0), (0.0, 640.5))]
    assert mapping_note(per_subject[0], per_subject[0], "a", "b") is None
    level, text = mapping_note(per_subject[0], per_subject[1], "a", "b")
    assert level == logging.INFO and "per image (percentile to [0, 1])" in text
    level, text = mapping_note(WINDOW, per_subject[0], "the samples are in", "prep/ holds")
    assert level == logging.WARNING and text.startswith("the samples are in intensities mapped as window -1000..1000 HU")

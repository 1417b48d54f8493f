"""``medgen evaluate`` on tiny trained autoencoders: reconstruction, samples (memorisation), conditional."""

import csv
import json
import logging
import math

import numpy as np
import pytest

from medgen_cli.artefacts import ArtefactError, ArtefactWriter, input_ref, require
from medgen_cli.errors import UsageError
from medgen_cli.meta import IntensityMapping
from medgen_cli.io.store import Store, store_path
from medgen_cli.metrics import memorisation_check
from medgen_cli.settings import load_settings
from medgen_cli.settings.evaluate import DEFAULT_MEMORISATION_THRESHOLD, EvaluateSettings
from medgen_cli.steps import evaluate, train_ae

from tests.train.helpers import make_prep, tiny_settings

import inspect


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(prep, ae) per spatial_dims: a 2D VQ-VAE and a 3D KL-VAE trained for 2 steps."""
    root = tmp_path_factory.mktemp("evaluate")
    out = {}
    for spatial_dims, kind in ((2, "vqvae"), (3, "klvae")):
        prep = make_prep(root / f"prep{spatial_dims}", spatial_dims, n_train=4, n_val=2)
        ae = root / f"ae{spatial_dims}"
        train_ae.run(tiny_settings(prep, kind, "train.steps=2", "train.val_every=0"), ae)
        out[spatial_dims] = (prep, ae)
    return out


def settings(**values) -> EvaluateSettings:
    return load_settings(EvaluateSettings, None, ["runtime.device=cpu", "max_pictures=2", "batch_size=2"],
                         {k: str(v) if not isinstance(v, (int, float)) else v for k, v in values.items()})


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_threshold_default_is_the_library_default():
    default = inspect.signature(memorisation_check).parameters["threshold"].default
    assert DEFAULT_MEMORISATION_THRESHOLD == default == EvaluateSettings().memorisation_threshold


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_reconstruction_writes_metrics_plots_and_pictures(tmp_path, trained, spatial_dims):
    prep, ae = trained[spatial_dims]
    result = evaluate.run(settings(ae=ae, data=prep, split="val"), tmp_path / "eval")
    out = tmp_path / "eval"
    assert require(out, "evaluation").summary["reconstruction"]["psnr"]["n"] == 2
    rows = read_rows(out / "items.csv")
    assert [r["item"] for r in rows] == ["item04", "item05"] and {r["split"] for r in rows} == {"val"}
    expected = {"ssim", "ms_ssim", "psnr", "mae", "rmse", "psnr_phys", "mae_phys", "rmse_phys"}
    if spatial_dims == 3:
        expected.add("ssim_slicewise")
    assert expected <= set(rows[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unit"] == "HU" and metrics["data_range"] == 2.0 and metrics["split"] == "val"
    for name in expected:
        agg = metrics["reconstruction"][name]
        assert set(agg) >= {"mean", "std", "median", "n"}
        assert agg["mean"] == pytest.approx(np.mean([float(r[name]) for r in rows]))
    # the window maps [-1, 1] onto -1000..1000 HU: errors scale by 1000, PSNR is the same
    for r in rows:
        assert float(r["mae_phys"]) == pytest.approx(1000 * float(r["mae"]), rel=1e-9)
        assert float(r["psnr_phys"]) == pytest.approx(float(r["psnr"]), rel=1e-9)
    assert ("codebook" in metrics) == (spatial_dims == 2)
    if spatial_dims == 2:
        assert 0 < metrics["codebook"]["codebook_usage"] <= 1 and metrics["codebook"]["codebook_perplexity"] >= 1
    assert {"hist_psnr.png", "box_similarity.png", "box_error_phys.png"} <= {p.name for p in (out / "plots").iterdir()}
    pictures = {p.name for p in (out / "pictures").iterdir()}
    assert {"reconstructions.png", "item04_views_input.png", "item04_views_reconstruction.png", "item05_error.png"} <= pictures
    if spatial_dims == 3:
        assert {"item04_strip_input.png", "item04_strip_reconstruction.png", "item04_mip.png"} <= pictures
    assert any(s == "reconstruction" and "psnr" in m for s, m, _ in result.rows)


@pytest.fixture
def evaluate_log():
    """Records of medgen_cli.steps.evaluate (attached directly: the CLI stops medgen_cli propagating)."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("medgen_cli.steps.evaluate")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_psnr_follows_the_mapping_range(tmp_path, trained, evaluate_log):
    """Same stored values, stored range 4 instead of 2: PSNR rises by 20 log10(2); HU values stay right."""
    prep, ae = trained[2]
    wide = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-2, out_high=2, clip=True)
    prep_wide = make_prep(tmp_path / "wide", 2, n_train=4, n_val=2, mapping=wide)
    evaluate.run(settings(ae=ae, data=prep, split="val"), tmp_path / "a")
    assert not [r for r in evaluate_log if r.levelno >= logging.WARNING]
    evaluate.run(settings(ae=ae, data=prep_wide, split="val"), tmp_path / "b")
    # the differing mapping is one warning sentence in words, not a Python dict
    warnings = [r.getMessage() for r in evaluate_log if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "{" not in warnings[0] and "'method'" not in warnings[0], warnings
    assert ("trained on intensities mapped as window -1000..1000 HU -> [-1, 1] (clipped), but" in warnings[0]
            and "holds window -1000..1000 HU -> [-2, 2] (clipped)" in warnings[0]), warnings
    a, b = read_rows(tmp_path / "a" / "items.csv"), read_rows(tmp_path / "b" / "items.csv")
    for ra, rb in zip(a, b):
        assert float(rb["psnr"]) - float(ra["psnr"]) == pytest.approx(20 * math.log10(2), abs=1e-9)
        assert float(rb["mae"]) == pytest.approx(float(ra["mae"]), rel=1e-12)  # same stored values
        assert float(rb["mae_phys"]) == pytest.approx(500 * float(rb["mae"]), rel=1e-9)  # 4 stored units = 2000 HU


def test_per_subject_percentile_mappings_are_expected_and_reported_once(evaluate_log):
    """MR percentiles are fitted per subject: differing end points are information, said once."""
    subject = [IntensityMapping(method="percentile", unit="a.u.", in_low=lo, in_high=hi, out_low=-1, out_high=1, clip=True)
               for lo, hi in ((3.0, 812.0), (0.0, 640.5))]
    evaluate.report_mappings(subject[0], subject[1], "the autoencoder ae/ was trained on", "prep/ holds")
    assert [r.levelno for r in evaluate_log] == [logging.INFO]
    text = evaluate_log[0].getMessage()
    assert "per image (percentile to [-1, 1])" in text and "{" not in text
    evaluate_log.clear()
    evaluate.report_mappings(subject[0], subject[0], "a", "b")  # identical: nothing to say
    assert evaluate_log == []
    other = IntensityMapping(method="percentile", unit="a.u.", in_low=3.0, in_high=812.0, out_low=0, out_high=1, clip=True)
    evaluate.report_mappings(subject[0], other, "the autoencoder ae/ was trained on", "prep/ holds")
    assert [r.levelno for r in evaluate_log] == [logging.WARNING]  # a different stored range is not per-subject


def make_samples(path, items, inputs=(), conditional=None):
    """A samples artefact holding ``items`` {id: (array, meta)}; ``conditional`` {id: subject}."""
    writer = ArtefactWriter(path, "samples", {"n": len(items)}, list(inputs))
    store = Store.create(store_path(writer.open(), "samples"), name="samples")
    for item_id, (arr, meta) in items.items():
        extra = {"condition_subject": conditional[item_id]} if conditional else {}
        store.write(item_id, arr, meta.replace(subject=""), dtype="float32", synthetic=True, **extra)
    writer.commit({})
    return path


def fake_lineage(root, prep, ae):
    """latents (ae, data) -> prior (latents): what `medgen sample` reads, with no payload."""
    lat = ArtefactWriter(root / "lat", "latents", {}, [input_ref(ae, "autoencoder", "autoencoder"),
                                                        input_ref(prep, "data", "preprocessed")])
    lat.open()
    lat.commit({})
    prior = ArtefactWriter(root / "prior", "prior", {}, [input_ref(root / "lat", "latents", "latents")])
    prior.open()
    prior.commit({})
    return input_ref(root / "prior", "prior", "prior")


def test_samples_memorisation_flags_a_copied_training_item(tmp_path, trained):
    prep, ae = trained[2]
    data = Store.open(store_path(prep))
    rng = np.random.default_rng(0)
    copy, meta = data.read_item("item01")  # a training item passed off as a sample
    other, _ = data.read_item("item05")  # a different subject (validation split)
    noisy = np.clip(data.read("item02") + rng.normal(0, 0.3, copy.shape), -1, 1).astype(np.float32)
    samples = make_samples(tmp_path / "samples", {"sample_0000": (copy, meta), "sample_0001": (other, meta),
                                                  "sample_0002": (noisy, meta)},
                           inputs=[fake_lineage(tmp_path, prep, ae)])
    result = evaluate.run(settings(samples=samples, data=prep), tmp_path / "eval")  # the ae comes from the lineage
    out = tmp_path / "eval"
    manifest = require(out, "evaluation")
    assert {i.role for i in manifest.inputs} == {"samples", "autoencoder", "data"}
    memo = {r["sample"]: r for r in read_rows(out / "memorisation.csv")}
    assert memo["sample_0000"]["flagged"] == "True" and memo["sample_0000"]["nearest_train"] == "item01"
    assert float(memo["sample_0000"]["ssim"]) == pytest.approx(1.0)
    assert memo["sample_0001"]["flagged"] == "False" and float(memo["sample_0001"]["ssim"]) < 0.8
    assert memo["sample_0000"]["nearest_subject"] == "s1"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["memorisation"]["flagged"] == 1 and metrics["memorisation"]["flagged_samples"] == ["sample_0000"]
    dist = metrics["distribution"]
    assert dist["split"] == "train" and dist["real_items"] == 4 and dist["unit"] == "HU"
    for key in ("frechet_distance", "mmd", "intensity_distance", "diversity_samples", "diversity_real"):
        assert math.isfinite(dist[key]), key
    assert dist["frechet_distance"] >= 0 and dist["intensity_distance"] >= 0
    assert (out / "pictures" / "memorisation" / "sample_0000.png").is_file()
    assert not (out / "pictures" / "memorisation" / "sample_0001.png").exists()
    assert (out / "pictures" / "samples.png").is_file() and (out / "plots" / "intensity_histogram.png").is_file()
    assert ("memorisation", "flagged (SSIM > 0.8)", "1 of 3") in result.rows


def test_conditional_pairs_samples_with_their_subject(tmp_path, trained):
    prep, _ = trained[2]
    data = Store.open(store_path(prep))
    s4, meta = data.read_item("item04")
    s5, _ = data.read_item("item05")
    items = {"s4_s00": (s4, meta), "s4_s01": (np.clip(s4 + 0.1, -1, 1), meta), "s5_s00": (s5 * 0.5, meta)}
    samples = make_samples(tmp_path / "samples", items, conditional={"s4_s00": "s4", "s4_s01": "s4", "s5_s00": "s5"})
    evaluate.run(settings(samples=samples, target=prep, split="val"), tmp_path / "eval")
    rows = {r["item"]: r for r in read_rows(tmp_path / "eval" / "items.csv")}
    assert {k: (r["subject"], r["target"]) for k, r in rows.items()} == {
        "s4_s00": ("s4", "item04"), "s4_s01": ("s4", "item04"), "s5_s00": ("s5", "item05")}
    assert float(rows["s4_s00"]["ssim"]) == pytest.approx(1.0) and float(rows["s4_s00"]["mae"]) == 0.0
    assert rows["s4_s00"]["psnr"] == "inf"  # identical: counted apart in the aggregate
    assert float(rows["s4_s01"]["mae_phys"]) > 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["conditional"]
    assert metrics["pairs"] == 3 and metrics["subjects"] == 2 and metrics["metrics"]["psnr"]["n_nonfinite"] == 1
    assert (tmp_path / "eval" / "pictures" / "conditional.png").is_file()

    bad = make_samples(tmp_path / "bad", {"x_s00": (s4, meta)}, conditional={"x_s00": "nobody"})
    with pytest.raises(UsageError, match="subject nobody of sample x_s00 has no item in"):
        evaluate.run(settings(samples=bad, target=prep), tmp_path / "e2")
    small = make_samples(tmp_path / "small", {"s4_s00": (s4[:8, :8], meta)}, conditional={"s4_s00": "s4"})
    with pytest.raises(UsageError, match=r"item s4_s00: shapes differ, \(8, 8\)"):
        evaluate.run(settings(samples=small, target=prep), tmp_path / "e3")


def test_errors_are_one_clear_sentence(tmp_path, trained):
    prep, ae = trained[2]
    with pytest.raises(ArtefactError, match="is a preprocessed artefact, but a autoencoder"):
        evaluate.run(settings(ae=prep, data=prep, split="val"), tmp_path / "e1")
    with pytest.raises(UsageError, match=r"has no items in split 'test' \(splits present: train, val\)"):
        evaluate.run(settings(ae=ae, data=prep), tmp_path / "e2")
    with pytest.raises(UsageError, match="nothing to evaluate"):
        evaluate.run(settings(), tmp_path / "e3")
    with pytest.raises(UsageError, match="has 3 spatial axes but the autoencoder is 2D"):
        evaluate.run(settings(ae=ae, data=trained[3][0], split="val"), tmp_path / "e4")
    samples = make_samples(tmp_path / "s", {"a": Store.open(store_path(prep)).read_item("item00")})
    with pytest.raises(UsageError, match="no autoencoder in the lineage"):
        evaluate.run(settings(samples=samples, data=prep), tmp_path / "e5")
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_pictures_of_slabs_show_only_the_view_across_the_thin_axis(tmp_path):
    """A 2D+T sequence (64x64x8) gets one view (across T), a cube three, a slice one."""
    from medgen_cli.meta import ImageMeta
    from medgen_cli.viz.evaluation import _centre_views, pair_grid

    meta = ImageMeta(affine=np.diag([0.7, 0.7, 5.0, 1.0]))
    seq, cube = np.zeros((64, 64, 8), np.float32), np.zeros((16, 16, 16), np.float32)
    seq[:, :, 4] = np.arange(64)[:, None]  # the centre frame carries the content
    (view,) = _centre_views(seq, meta)
    assert view.image.shape == (64, 64) and np.ptp(view.image) == 63  # the T-centre frame, not a 64x8 strip
    assert len(_centre_views(cube, meta)) == 3 and len(_centre_views(seq[:, :, 0], meta)) == 1
    import matplotlib.image

    one = matplotlib.image.imread(pair_grid(tmp_path / "seq.png", [seq], [seq], [meta], ["s"], ("a", "b", "c"), (0, 63), 1.0))
    three = matplotlib.image.imread(pair_grid(tmp_path / "cube.png", [cube], [cube], [meta], ["c"], ("a", "b", "c"), (0, 1), 1.0))
    assert one.shape[0] < three.shape[0] / 2  # one row of panels instead of three

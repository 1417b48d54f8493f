"""``medgen sample``: decoded samples carry the training data's shape and metadata; strategies, seeds,
conditional sampling by subject, resume and bad input."""

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen_cli.artefacts import require
from medgen_cli.errors import UsageError
from medgen_cli.meta import ImageMeta
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import SettingsError
from medgen_cli.steps import sample
from medgen_cli.loaders.autoencoder import load_autoencoder

from tests.steps.conftest import sample_settings


def _codes(out, level="codes"):
    store = Store.open(store_path(out, level))
    return {i: store.array(i)[...] for i in store.ids()}


def _images(out):
    store = Store.open(store_path(out, "samples"))
    return {i: store.read(i) for i in store.ids()}


@pytest.mark.parametrize("name, ae", [("transformer", "vq"), ("maskgit", "vq"), ("pixelcnn", "vq"), ("pixelcnn2", "vq2")])
def test_end_to_end_samples_have_the_training_data_shape_and_metadata(chain, tmp_path, name, ae):
    out = sample.run(sample_settings(chain.prior(name), "runtime.seed=5"), tmp_path / "s").out
    manifest = require(out, "samples")
    assert [(r.role, r.path) for r in manifest.inputs] == [("prior", str(chain.prior(name).resolve()))]
    samples = Store.open(store_path(out, "samples"))
    assert samples.ids() == ["sample_0000", "sample_0001", "sample_0002"]
    data = Store.open(store_path(chain.prep, "drr"))
    reference = data.meta(data.ids("train")[0])
    geometry, _ = sample.representative_geometry(data, (16, 16))
    codes = _codes(out)
    model, _ = load_autoencoder(chain.ae[ae])
    for item_id in samples.ids():
        image, meta = samples.read_item(item_id)
        assert image.shape == data.array(data.ids()[0]).shape == (16, 16)
        # no patient's position: the training items' voxel axes, the image centred on (0, 0, 0) mm
        np.testing.assert_allclose(meta.affine, geometry)
        np.testing.assert_allclose(meta.affine[:3, :3], reference.affine[:3, :3])
        np.testing.assert_allclose(meta.affine @ [7.5, 7.5, 0, 1], [0, 0, 0, 1], atol=1e-9)
        assert meta.intensity == reference.intensity and meta.modality == "XR"
        assert image.min() >= reference.intensity.out_low and image.max() <= reference.intensity.out_high
        attrs = samples.item_attrs(item_id)
        assert attrs["synthetic"] is True and attrs["seed"] == 5 and "condition_subject" not in attrs
        assert attrs["geometry"] == "representative" and "not a patient position" in attrs["geometry_note"]
        assert attrs["strategy"] == ("maskgit" if name == "maskgit" else "multinomial")
        assert codes[item_id].dtype == np.int16 and codes[item_id].shape == (4, 4)
        # the image is the decoded codes
        with torch.no_grad():
            grid = torch.from_numpy(codes[item_id].astype(np.int64))[None]
            if name == "pixelcnn2":
                top = torch.from_numpy(_codes(out, "codes_top")[item_id].astype(np.int64))[None]
                assert top.shape == (1, 2, 2)
                decoded = model.decode_indices(top, grid)
            else:
                decoded = model.decode_indices(grid)
        np.testing.assert_allclose(image, np.clip(decoded[0, 0].numpy(), *sorted(
            (reference.intensity.out_low, reference.intensity.out_high))), atol=1e-5)
        # NIfTI in physical units, marked synthetic, with the representative affine
        nii = nib.load(str(out / "nifti" / f"{item_id}.nii.gz"))
        np.testing.assert_allclose(nii.affine, geometry, atol=1e-5)
        np.testing.assert_allclose(nii.get_fdata()[..., 0], reference.intensity.to_physical(image), rtol=1e-4, atol=1e-4)
        assert nii.header["descrip"].tobytes().startswith(b"SYNTHETIC (medgen)")
    assert (out / "previews" / "samples.png").is_file()


def _matvec(matrix, vector):
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = matrix, vector
    return out


def _geometry_store(path, items):
    store = Store.create(path)
    for name, shape, affine in items:
        store.write(name, np.zeros(shape), ImageMeta(affine=affine), split="train")
    return Store.open(path)


def test_representative_geometry_is_the_common_spacing_and_direction_centred_on_the_origin(tmp_path):
    """Independent reference: the affine written out by hand for the expected spacing, axes and centre."""
    lps = np.diag([-1.0, -1.0, 1.0])  # the most frequent direction below
    items = [("a", (4, 6, 8), _matvec(lps @ np.diag([0.5, 0.7, 2.0]), [10, 20, -71])),
             ("b", (4, 6, 8), _matvec(lps @ np.diag([0.5, 0.9, 3.0]), [-5, 2, 30])),
             ("c", (4, 6, 8), _matvec(np.diag([0.6, 0.8, 2.5]), [0, 0, 0])),
             ("d", (9, 9, 9), _matvec(np.diag([9.0, 9.0, 9.0]), [0, 0, 0]))]  # another shape: ignored
    affine, note = sample.representative_geometry(_geometry_store(tmp_path / "s.zarr", items), (4, 6, 8))
    # median spacing (0.5, 0.8, 2.5); axes -x, -y, +z; centre voxel (1.5, 2.5, 3.5) at the origin
    expected = np.array([[-0.5, 0, 0, 0.75], [0, -0.8, 0, 2.0], [0, 0, 2.5, -8.75], [0, 0, 0, 1]])
    np.testing.assert_allclose(affine, expected, atol=1e-12)
    assert "[0.5, 0.8, 2.5] mm" in note and "3 training item(s)" in note and "centred on (0, 0, 0) mm" in note


def test_representative_geometry_of_2d_slices_keeps_the_slice_normal(tmp_path):
    axial = _matvec(np.diag([-0.7, -0.7, 5.0]), [100, 120, -71])  # every slice at z = -71 mm before
    items = [(f"z{k}", (16, 16), axial + np.array([[0, 0, 0, 0]] * 2 + [[0, 0, 0, 5.0 * k], [0, 0, 0, 0]]))
             for k in range(3)]
    affine, _ = sample.representative_geometry(_geometry_store(tmp_path / "s.zarr", items), (16, 16))
    np.testing.assert_allclose(affine[:3, :3], axial[:3, :3])
    np.testing.assert_allclose(affine[:3, 3], [0.7 * 7.5, 0.7 * 7.5, 0.0])


def test_top_k_alone_implies_top_k_and_greedy_is_deterministic(chain, tmp_path):
    prior = chain.prior("transformer")
    settings = sample_settings(prior, **{"sampler.top_k": 1})
    assert settings.sampler.strategy == "auto" and settings.sampler.token_strategy() == "top-k"
    top1 = sample.run(settings, tmp_path / "top1").out
    assert Store.open(store_path(top1, "samples")).item_attrs("sample_0000")["strategy"] == "top-k"
    greedy = [sample.run(sample_settings(prior, "sampler.strategy=greedy", f"runtime.seed={seed}"), tmp_path / f"g{seed}").out
              for seed in (1, 2)]
    a, b, k1 = _codes(greedy[0]), _codes(greedy[1]), _codes(top1)
    assert a.keys() == b.keys() == k1.keys()
    for item_id in a:  # greedy ignores the seed; top-1 is greedy, so top-k was really applied
        np.testing.assert_array_equal(a[item_id], b[item_id])
        np.testing.assert_array_equal(a[item_id], k1[item_id])
        np.testing.assert_array_equal(a[item_id], a["sample_0000"])  # every greedy sample is the same


@pytest.mark.parametrize("name", ["transformer", "maskgit", "pixelcnn"])
def test_the_same_seed_gives_the_same_samples(chain, tmp_path, name):
    prior = chain.prior(name)
    runs = [_images(sample.run(sample_settings(prior, f"runtime.seed={seed}", "sampler.top_p=0.9"), tmp_path / f"r{n}").out)
            for n, seed in enumerate((7, 7, 8))]
    assert all(np.array_equal(runs[0][i], runs[1][i]) for i in runs[0])
    assert not all(np.array_equal(runs[0][i], runs[2][i]) for i in runs[0])


def test_conditional_transformer_samples_for_one_subject_and_for_all(chain, tmp_path):
    prior = chain.prior("conditional")
    one = sample.run(sample_settings(prior, "num_samples=2", "condition.subject=ct01", "sampler.top_k=4"), tmp_path / "one")
    assert one.ids == ["ct01_s00", "ct01_s01"]
    samples = Store.open(store_path(one.out, "samples"))
    ct = Store.open(store_path(chain.prep))
    for item_id in one.ids:
        image, meta = samples.read_item(item_id)
        assert image.shape == (16, 16, 16) and samples.item_attrs(item_id)["condition_subject"] == "ct01"
        np.testing.assert_allclose(meta.affine, ct.meta("ct01").affine)  # the subject's own CT geometry
        assert meta.intensity.unit == "HU" and "geometry" not in meta.attrs
    manifest = require(one.out, "samples")
    assert [r.role for r in manifest.inputs] == ["prior", "condition"]
    assert sorted(p.name for p in (one.out / "previews").iterdir()) == ["ct01_s00.png", "ct01_s01.png", "samples.png"]

    every = sample.run(sample_settings(prior, "num_samples=1", "condition.all_subjects=true", "condition.split=train"),
                       tmp_path / "all")
    train_subjects = sorted(ct.subjects("train"))
    assert every.ids == [f"{s}_s00" for s in train_subjects] and every.summary["subjects"] == train_subjects
    # a subject's samples do not depend on which other subjects the run draws for (seeded by its name)
    last = train_subjects[-1]
    alone = sample.run(sample_settings(prior, "num_samples=1", f"condition.subject={last}"), tmp_path / "alone")
    np.testing.assert_array_equal(Store.open(store_path(alone.out, "codes")).read(f"{last}_s00"),
                                  Store.open(store_path(every.out, "codes")).read(f"{last}_s00"))


def test_resume_gives_the_uninterrupted_result(chain, tmp_path):
    settings = sample_settings(chain.prior("transformer"), "num_samples=4", "sampler.temperature=1.5")
    straight = _images(sample.run(settings, tmp_path / "a").out)

    def interrupt(done, total, text):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample.run(settings, tmp_path / "b", progress=interrupt)
    resumed = _images(sample.run(settings, tmp_path / "b").out)
    assert straight.keys() == resumed.keys() and all(np.array_equal(straight[i], resumed[i]) for i in straight)


def test_class_labels(chain, tmp_path):
    prior = chain.prior("labelled")
    out = sample.run(sample_settings(prior, "condition.label=lateral"), tmp_path / "s").out
    assert len(_images(out)) == 3
    with pytest.raises(UsageError, match=r"--label 'pa' is not a class of .*; choose one of \['ap', 'lateral'\]"):
        sample.run(sample_settings(prior, "condition.label=pa"), tmp_path / "t")


@pytest.mark.parametrize("prior, overrides, message", [
    ("conditional", [], r"is conditioned on .*; pass --subject ID or --all"),
    ("conditional", ["condition.subject=nobody"], r"subject 'nobody' has 0 item\(s\) in .*, but the prior takes 2"),
    ("conditional", ["condition.all_subjects=true", "condition.split=nosuchsplit"], "no subject has items in every"),
    ("transformer", ["condition.subject=ct01"], "is not conditioned on other latents"),
    ("transformer", ["sampler.strategy=maskgit"], "--strategy maskgit needs a maskgit prior"),
    ("transformer", ["condition.label=ap"], "takes no class labels"),
])
def test_bad_input_is_a_one_sentence_usage_error(chain, tmp_path, prior, overrides, message):
    with pytest.raises(UsageError, match=message):
        sample.run(sample_settings(chain.prior(prior), *overrides), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_conditions_of_another_shape_are_refused(chain, tmp_path):
    with pytest.raises(UsageError, match=r"holds \[4, 4, 4\] grids of 32 codes, but the prior was conditioned on \[4, 4\]"):
        sample.run(sample_settings(chain.prior("conditional"), "condition.subject=ct01",
                                   f"condition.paths=[{chain.latents['vq3d']}]"), tmp_path / "s")


def test_sampler_settings_are_checked():
    with pytest.raises(SettingsError, match="strategy = 'top-k' needs sampler.top_k"):
        sample_settings("p", "sampler.strategy=top-k")
    with pytest.raises(SettingsError, match="strategy = 'greedy' takes no top_k or top_p"):
        sample_settings("p", "sampler.strategy=greedy", "sampler.top_k=3")
    with pytest.raises(SettingsError, match="'sampler.top_p' = 1.5"):
        sample_settings("p", "sampler.top_p=1.5")

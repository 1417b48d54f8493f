"""``medgen export`` end to end: stores to NIfTI/DICOM/PNG keeping geometry and HU, synthetic marks,
decoded latents, and autoencoders to TorchScript/ONNX/safetensors checked against PyTorch."""

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medgen_cli.artefacts import ArtefactError, ArtefactWriter, require
from medgen_cli.errors import UsageError
from medgen_cli.export.images import SYNTHETIC_MARK
from medgen_cli.io.store import Store, store_path
from medgen_cli.models import build_autoencoder
from medgen_cli.settings import load_settings
from medgen_cli.settings.evaluate import ExportSettings
from medgen_cli.settings.prior import EncodeSettings
from medgen_cli.steps import encode_latents, export, train_ae
from medgen_cli.loaders.autoencoder import load_autoencoder

from tests.export.helpers import ct_item, read_series, sitk_affine, values_at_item_voxels
from tests.train.helpers import make_prep, tiny_settings

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")


def settings(**values) -> ExportSettings:
    return load_settings(ExportSettings, None, ["runtime.device=cpu"],
                         {k: v if isinstance(v, (bool, list)) else str(v) for k, v in values.items()})


def index(out):
    with open(out / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ct_prep(tmp_path_factory):
    """A preprocessed artefact of three oblique, anisotropic CT volumes (window -1000..1000 HU)."""
    path = tmp_path_factory.mktemp("ct") / "prep"
    writer = ArtefactWriter(path, "preprocessed", {})
    store = Store.create(store_path(writer.open()))
    for i, split in enumerate(("train", "train", "test")):
        stored, meta, _ = ct_item(3)
        store.write(f"ct{i}", stored + 0.01 * i, meta.replace(subject=f"p{i}"), dtype="float32", split=split)
    writer.commit({})
    return path


@pytest.fixture(scope="module")
def vq(tmp_path_factory):
    """(prep, ae): a 2D VQ-VAE trained for 2 steps."""
    root = tmp_path_factory.mktemp("vq")
    prep = make_prep(root / "prep", 2, n_train=3, n_val=1)
    train_ae.run(tiny_settings(prep, "vqvae", "train.steps=2", "train.val_every=0"), root / "ae")
    return prep, root / "ae"


def test_nifti_of_a_store_keeps_the_affine_and_hu(tmp_path, ct_prep):
    import nibabel as nib
    import SimpleITK as sitk

    result = export.run(settings(source=ct_prep, format="nifti", split="test"), tmp_path / "nii")
    out = tmp_path / "nii"
    assert require(out, "export").summary["items"] == 1 and "ct2.nii.gz" in result.files
    assert [(r["item"], r["subject"], r["split"], r["synthetic"], r["files"]) for r in index(out)] == [
        ("ct2", "p2", "test", "False", "ct2.nii.gz")]
    stored, meta = Store.open(store_path(ct_prep)).read_item("ct2")
    hu = meta.intensity.to_physical(stored)
    img = nib.load(str(out / "ct2.nii.gz"))
    np.testing.assert_allclose(img.affine, meta.affine, atol=1e-4)
    np.testing.assert_allclose(np.asarray(img.dataobj), hu, atol=1e-3)
    itk = sitk.ReadImage(str(out / "ct2.nii.gz"))
    np.testing.assert_allclose(sitk_affine(itk), meta.affine, atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(itk).transpose(2, 1, 0), hu, atol=1e-3)


def test_dicom_of_a_ct_item_has_hu_and_geometry(tmp_path, ct_prep):
    export.run(settings(source=ct_prep, format="dicom", items="ct1"), tmp_path / "dcm")
    stored, meta = Store.open(store_path(ct_prep)).read_item("ct1")
    img, values, files = read_series(tmp_path / "dcm" / "ct1")
    assert len(files) in stored.shape and index(tmp_path / "dcm")[0]["files"] == "ct1"
    # the series may be reoriented (standard DICOM orientation): compare HU at the same world positions
    np.testing.assert_allclose(values_at_item_voxels(stored.shape, meta.affine, values, sitk_affine(img)),
                               meta.intensity.to_physical(stored), atol=0.5 + 1e-3)  # int16 HU


def test_samples_are_marked_synthetic(tmp_path, ct_prep):
    import nibabel as nib
    from PIL import Image

    stored, meta = Store.open(store_path(ct_prep)).read_item("ct0")
    writer = ArtefactWriter(tmp_path / "samples", "samples", {})
    store = Store.create(store_path(writer.open(), "samples"), name="samples")
    store.write("sample_0000", stored, meta.replace(subject=""), dtype="float32", synthetic=True)
    store.write("sample_0001", stored[:, :, 2], meta.replace(subject=""), dtype="float32", synthetic=True)
    writer.commit({})
    export.run(settings(source=tmp_path / "samples", format="nifti"), tmp_path / "nii")
    rows = index(tmp_path / "nii")
    assert [r["synthetic"] for r in rows] == ["True", "True"]
    assert require(tmp_path / "nii", "export").summary["synthetic"] == 2
    descrip = nib.load(str(tmp_path / "nii" / "sample_0000.nii.gz")).header["descrip"].tobytes().decode()
    assert descrip.startswith(SYNTHETIC_MARK)
    export.run(settings(source=tmp_path / "samples", format="png", items="sample_0001"), tmp_path / "png")
    assert Image.open(tmp_path / "png" / "sample_0001.png").text["Description"].startswith(SYNTHETIC_MARK)


@pytest.mark.parametrize("kind", ["vqvae", "vqvae2", "klvae"])
def test_latents_are_decoded_through_their_autoencoder(tmp_path, vq, kind):
    import nibabel as nib

    prep, ae = vq
    if kind != "vqvae":
        ae = tmp_path / "ae"
        train_ae.run(tiny_settings(prep, kind, "train.steps=1", "train.val_every=0"), ae)
    lat = tmp_path / "lat"
    encode_latents.run(load_settings(EncodeSettings, None, [f"ae={ae}", f"data={prep}", "runtime.device=cpu"]), lat)
    with pytest.raises(UsageError, match="holds latents, not images; pass --decode"):
        export.run(settings(source=lat, format="nifti"), tmp_path / "x")
    export.run(settings(source=lat, format="nifti", decode=True, split="val"), tmp_path / "nii")
    assert {i.role for i in require(tmp_path / "nii", "export").inputs} == {"source", "autoencoder"}
    assert [(r["item"], r["split"]) for r in index(tmp_path / "nii")] == [("item03", "val")]
    model, _ = load_autoencoder(ae)
    image, meta = Store.open(store_path(prep)).read_item("item03")
    with torch.no_grad():
        recon = model.decode_latents(model.encode_to_latents(torch.from_numpy(image)[None, None]))[0, 0].numpy()
    img = nib.load(str(tmp_path / "nii" / "item03.nii.gz"))  # the image's geometry and HU, not the grid's
    np.testing.assert_allclose(img.affine, meta.affine, atol=1e-6)
    np.testing.assert_allclose(np.asarray(img.dataobj)[..., 0], meta.intensity.to_physical(recon), atol=1e-2)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_autoencoder_modules_equal_pytorch(tmp_path, vq, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="ONNX export is optional: pip install 'medgen-cli[onnx]'")
    _, ae = vq
    result = export.run(settings(source=ae, format=fmt), tmp_path / "m")
    modules = result.summary["modules"]
    assert [m["name"] for m in modules] == ["encoder", "decoder", "encoder_indices", "decoder_indices"]
    assert all(m["max_abs_diff"] <= 1e-4 for m in modules)
    suffix = ".pt" if fmt == "torchscript" else ".onnx"
    assert {f"{m['name']}{suffix}" for m in modules} | {"model.json", "checks.json"} <= set(result.files)
    if fmt == "torchscript":  # the saved decoder on new latents
        model, _ = load_autoencoder(ae)
        x = torch.rand(2, 1, 16, 16) * 2 - 1
        with torch.no_grad():
            z = model.encode_to_latents(x)
            out = torch.jit.load(str(tmp_path / "m" / "decoder.pt"))(z)
            assert torch.allclose(out, model.decode_latents(z), atol=1e-4, rtol=0)


def test_safetensors_with_a_model_card(tmp_path, vq):
    prep, ae = vq
    export.run(settings(source=ae, format="safetensors"), tmp_path / "st")
    out = tmp_path / "st"
    info = json.loads((out / "model.json").read_text())
    model = build_autoencoder(**info["config"])
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    reference, _ = load_autoencoder(ae)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    card = (out / "README.md").read_text()
    assert "# medgen autoencoder: vqvae (2D)" in card and "subjects: 4" in card
    assert f"data: preprocessed `{prep.resolve()}`" in card and "Not a medical device" in card
    assert json.loads((out / "checks.json").read_text())["modules"][0]["max_abs_diff"] == 0.0


def test_errors_name_the_problem(tmp_path, ct_prep, vq):
    _, ae = vq
    with pytest.raises(ArtefactError, match="is a autoencoder artefact, but a preprocessed or samples or latents"):
        export.run(settings(source=ae, format="nifti"), tmp_path / "a")
    with pytest.raises(ArtefactError, match="is a preprocessed artefact, but a autoencoder artefact"):
        export.run(settings(source=ct_prep, format="torchscript"), tmp_path / "b")
    with pytest.raises(UsageError, match=r"has no item\(s\) ct7 in split 'test'"):
        export.run(settings(source=ct_prep, format="nifti", split="test", items="ct2,ct7"), tmp_path / "c")
    with pytest.raises(UsageError, match="has no items in split 'val'"):
        export.run(settings(source=ct_prep, format="nifti", split="val"), tmp_path / "d")
    with pytest.raises(UsageError, match="has no store named 'drr'; it has main"):
        export.run(settings(source=ct_prep, format="nifti", store="drr"), tmp_path / "e")
    with pytest.raises(UsageError, match="--decode applies to latents"):
        export.run(settings(source=ct_prep, format="nifti", decode=True), tmp_path / "f")
    assert not list(tmp_path.iterdir())  # nothing half-written

"""Image + mask pairs from the datasets, and augmentation that moves the mask with the image (nearest neighbour)."""

import itertools

import numpy as np
import pytest
import torch

from medgen_cli.data import ItemDataset, PairedDataset, PatchDataset, build_augmentation
from medgen_cli.meta import ImageMeta
from medgen_cli.io.store import Store


def _labels(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.int16)


@pytest.fixture
def artefact(make_store, ramp, tmp_path):
    """``main`` and ``lowdose`` image stores and their ``masks`` store, as preprocess lays them out."""
    items = {"a": (ramp((6, 5, 4)), "s1", "train"), "b": (ramp((6, 5, 4), 1.0), "s2", "train")}
    main = make_store("main", items)
    make_store("lowdose", items)
    masks = Store.create(tmp_path / "masks.zarr", name="masks")
    for k, item_id in enumerate(("a", "b")):
        masks.write(item_id, _labels((6, 5, 4), k), ImageMeta(), dtype="int16", split="train")
    return main, Store.open(masks.path)


def test_masks_are_off_by_default_and_pair_by_item_id(artefact):
    main, masks = artefact
    assert "mask" not in ItemDataset(main, split="train")[0]
    ds = ItemDataset(main, split="train", masks=True)
    for k, sample in enumerate(ds):
        assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (1, 6, 5, 4)
        np.testing.assert_array_equal(sample["mask"][0].numpy(), _labels((6, 5, 4), k))
        np.testing.assert_array_equal(sample["image"][0].numpy(), main.read(sample["id"]))
    explicit = ItemDataset(main, split="train", masks=masks.path)
    assert torch.equal(explicit[1]["mask"], ds[1]["mask"])
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["mask"].shape == (2, 1, 6, 5, 4) and batch["image"].shape == (2, 1, 6, 5, 4)


def test_paired_dataset_yields_the_targets_mask(artefact, tmp_path):
    main, _ = artefact
    ds = PairedDataset(tmp_path / "lowdose.zarr", [main], split="train", join="item", masks=True)  # lowdose -> masks
    np.testing.assert_array_equal(ds[0]["mask"][0].numpy(), _labels((6, 5, 4), 0))


def test_patches_read_the_same_region_of_the_mask_padded_with_zero(artefact):
    main, _ = artefact
    ds = PatchDataset(main, "train", (4, 4, 6), samples_per_item=4, seed=3, masks=True)  # k is padded: 4 < 6
    for index in range(len(ds)):
        sample = ds[index]
        origin = sample["origin"].tolist()
        full = np.zeros((6 + 8, 5 + 8, 4 + 8), dtype=np.int64)  # the labels inside a margin of 0
        full[4:10, 4:9, 4:8] = _labels((6, 5, 4), 0 if sample["id"] == "a" else 1)
        want = full[tuple(slice(o + 4, o + 4 + p) for o, p in zip(origin, (4, 4, 6)))]
        np.testing.assert_array_equal(sample["mask"][0].numpy(), want)


def test_a_missing_mask_store_or_item_is_named(make_store, ramp, tmp_path):
    main = make_store("main", {"a": (ramp((4, 4)), "s1", "train")})
    with pytest.raises(ValueError, match=r"has no paired mask store .*masks\.zarr.*--masks"):
        ItemDataset(main, masks=True)
    other = Store.create(tmp_path / "other.zarr")
    other.write("zz", np.zeros((4, 4)), ImageMeta(), dtype="int16", split="train")
    with pytest.raises(ValueError, match="has no mask for item 'a'"):
        ItemDataset(main, masks=other.path)
    other.write("a", np.zeros((4, 5)), ImageMeta(), dtype="int16", split="train")
    with pytest.raises(ValueError, match=r"the mask of 'a' is \(4, 5\) but its image is \(4, 4\)"):
        ItemDataset(main, masks=Store.open(other.path))


# --------------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flips_move_the_mask_with_the_image(spatial_dims):
    x = torch.randn(8, 1, *(5, 6, 7)[:spatial_dims])
    mask = torch.randint(0, 5, x.shape)
    aug = build_augmentation(spatial_dims, enabled=True, flip=0.5, intensity_shift=0.2)
    torch.manual_seed(0)
    out, moved = aug(x, mask)
    torch.manual_seed(0)
    assert torch.equal(aug(x), out)  # asking for the mask changes nothing for the image
    assert moved.dtype == mask.dtype
    axes = [d + 1 for d in range(spatial_dims)]  # spatial axes of one element (C, *spatial)
    flip_sets = [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]
    seen = set()
    for b in range(x.shape[0]):
        dims = next(d for d in flip_sets if torch.equal(mask[b].flip(d) if d else mask[b], moved[b]))
        seen.add(dims)
        diff = out[b] - (x[b].flip(dims) if dims else x[b])  # the image took the same flips: only a shift is left
        assert torch.allclose(diff, diff.flatten()[0].expand_as(diff), atol=1e-5)
    assert len(seen) > 1  # some elements were flipped, others not


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_affine_warp_moves_the_mask_by_nearest_neighbour(spatial_dims):
    """Where the bilinear warp of a 0/1 map is ~1 (or ~0), every voxel it blends is 1 (or 0), so the nearest is too."""
    shape = (20, 22, 16)[:spatial_dims]
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = (sum(g**2 for g in grids) < 0.4).long()[None, None].repeat(4, 1, *(1,) * spatial_dims)
    labels = blob * 3  # labels {0, 3}
    aug = build_augmentation(spatial_dims, enabled=True, rotate=25, scale=(0.8, 1.2), translate=0.1, fill=0.0)
    torch.manual_seed(1)
    warped, moved = aug(blob.float(), labels)
    assert set(moved.unique().tolist()) <= {0, 3}  # never interpolated
    assert not torch.equal(moved, labels)  # it did move
    assert (moved[warped > 0.99] == 3).all() and (moved[warped < 0.01] == 0).all()
    assert ((warped > 0.99) | (warped < 0.01)).float().mean() > 0.6  # the check covers most voxels


def test_mask_shape_must_match():
    aug = build_augmentation(2, enabled=True, flip=1.0)
    with pytest.raises(ValueError, match="must match the images"):
        aug(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5, dtype=torch.long))

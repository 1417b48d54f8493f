"""Latent items (``encode-latents`` artefacts) as training data for priors, and their geometry.

A latents store holds one array per data item, with the item's id: VQ codes as int16 index grids
``(*grid)`` without a channel axis, KL latents as float ``(C, *grid)``. Here codes come back as
int64 tensors (what embeddings take) and KL latents as float32, both without an added channel axis.

- `latent_meta`: an image's ``ImageMeta`` turned into the geometry of its downsampled latent grid.
- `read_latent`: one stored latent as a tensor.
- `LatentsDataset`: items of a latents store with, optionally, further levels read by the same id
  (the VQ-VAE-2 top codes), condition stores joined by subject (`PairedDataset`'s rule: all items
  of the subject, ordered by ``view`` then id) or by item id (``join="item"``: the condition item
  of the same id, e.g. the low-dose copy of a sequence) and a class label from an item attribute.
- `subject_conditions` / `condition_subjects`: for sampling a subject-joined prior, the condition
  grids of one subject (in the same order) and the subjects that have them.
- `condition_items`: for sampling an item-joined prior, the condition items present in every store.

Diffusion priors model continuous tensors (Rombach et al. 2022, sec. 3 and 4.3.2):

- `LatentCodec`: stored latents -> the ``(B, C, *grid)`` float tensors a diffusion prior models.
  KL latents are stored already multiplied by the autoencoder's ``latent_scale`` and are modelled as
  stored; VQ codes become their codebook vectors times ``scale`` (1 / std of the training latents,
  `unit_scale`), so the continuous latents of a VQ autoencoder have unit variance too.
- `resize_latents` / `condition_channels`: condition latents (joined by subject or item), brought to the
  target's grid and concatenated as channels. A grid of another size (a ``downsample:2`` store
  encoded with the same autoencoder has half the grid) is resized by (bi/tri)linear interpolation
  with ``align_corners=False``, so voxel centres line up as in `latent_meta` (image voxel f*v..f*v+f-1).
- `ContinuousLatentsDataset`: a `LatentsDataset` as ``{"x0", "cond", "label", ...}`` for diffusion; with
  mask channels (`medgen_cli.data.masks.MaskChannels`), each item's label fractions on the latent grid
  (its data item's mask, found by the latent's ``source_id``) are appended to ``cond``; with spacing
  channels (``condition.spacing``), the item's normalised log voxel spacing follows them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..meta import ImageMeta, IntensityMapping
from ..io.store import Store
from .datasets import StoreLike, open_store
from .paired import PairedDataset, resolve_join, view_order as _view_order
from .stores import common_shape as _common_shape, split_ids as _split_ids

__all__ = ["ContinuousLatentsDataset", "LatentCodec", "LatentsDataset", "condition_channels", "condition_items",
           "condition_subjects", "latent_meta", "read_latent", "resize_latents", "resolve_join", "subject_conditions",
           "unit_scale"]

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}  # by number of spatial axes

# attributes describing an image's values, meaningless for its latents
_VALUE_ATTRS = ("background", "complete")


def latent_meta(meta: ImageMeta, factor: Sequence[int], **attrs: Any) -> ImageMeta:
    """The geometry of an image's latent grid, downsampled by ``factor`` along its voxel axes.

    Latent voxel ``v`` covers image voxels ``f*v .. f*v + f - 1``, so its centre lies at image
    index ``f*v + (f - 1) / 2``: the voxel axes of the affine are scaled by ``f`` and the origin moves
    by half a latent voxel minus half an image voxel. A 2D item keeps its slice normal (third column).
    The intensity mapping becomes the identity (latents are not physical values).

    Args:
        meta: the image's metadata.
        factor: per-axis downsampling factor, one value per spatial axis of the item.
        attrs: attributes added to (or replacing) the image's.
    """
    affine = np.array(meta.affine, dtype=np.float64)
    f = np.ones(3)
    f[: len(factor)] = np.asarray(factor, dtype=np.float64)
    shift = affine[:3, :3] @ ((f - 1.0) / 2.0)
    affine[:3, :3] = affine[:3, :3] * f[None, :]
    affine[:3, 3] = affine[:3, 3] + shift
    kept = {k: v for k, v in meta.attrs.items() if k not in _VALUE_ATTRS}
    return ImageMeta(affine=affine, modality=meta.modality, subject=meta.subject, source=meta.source,
                     intensity=IntensityMapping(), attrs={**kept, **attrs})


def read_latent(store: Store, item_id: str) -> torch.Tensor:
    """A stored latent: int16 codes -> int64 ``(*grid)``; floats -> float32 ``(C, *grid)``."""
    return _latent(store.read(item_id, dtype=None))  # checked: a lost or damaged chunk is an error naming the item


def _latent(array: np.ndarray) -> torch.Tensor:
    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


class LatentsDataset(Dataset):
    """Items of a latents store, for training a prior.

    Each sample is ``{"codes": (*grid) int64 or (C, *grid) float32, "id", "subject"}`` plus one
    entry per extra level (e.g. ``"top"``), ``"condition": [grid, ...]`` when condition stores are
    given (one grid per condition item, stores in order) and ``"label": int64 ()`` with ``classes``.

    Args:
        store_or_path: the latents store (``main``).
        split: split to read (None: all items).
        ids: explicit item ids instead of a split (no conditions then).
        levels: ``{name: store}`` read with the same item ids (the vqvae2 ``top`` store).
        condition_stores: stores joined by ``join`` (see `PairedDataset`); with the subject join,
            subjects missing from any of them are dropped with a warning, and a ValueError is raised
            when none pair.
        join: "subject", "item" or "auto" (`resolve_join`); the join used is ``self.join``.
        label_attr: item attribute holding the class label (needs ``classes``).
        classes: the label values; a sample's label is the index of its value.
    """

    def __init__(self, store_or_path: StoreLike, split: str | None = None, ids: Sequence[str] | None = None, *,
                 levels: Mapping[str, StoreLike] | None = None, condition_stores: Sequence[StoreLike] = (),
                 label_attr: str | None = None, classes: Sequence[str] = (), join: str = "subject"):
        self.store = open_store(store_or_path)
        self.levels = {name: open_store(s) for name, s in (levels or {}).items()}
        self.conditions: list[Store] = []
        self.join: str | None = None
        if condition_stores:
            if ids is not None:
                raise ValueError("ids and condition_stores exclude each other; pass a split with condition stores")
            paired = PairedDataset(self.store, list(condition_stores), split, join=join)
            self.conditions, self.join = paired.conditions, paired.join
            self.samples = paired.samples  # (target id, subject, [condition ids per store])
            self.condition_shapes = paired.condition_shapes
        else:
            self.samples = [(i, str(self.store.item_attrs(i).get("subject", "")), [])
                            for i in _split_ids(self.store, split, ids)]
            self.condition_shapes = []
        self.ids = [t for t, _, _ in self.samples]
        self.shape = _common_shape(self.store, self.ids)
        for name, level in self.levels.items():
            missing = [i for i in self.ids if not level.is_complete(i)]
            if missing:
                raise ValueError(f"{level.path} ({name}) lacks item(s) {missing[:3]} of {self.store.path}")
        self.level_shapes = {name: _common_shape(level, self.ids) for name, level in self.levels.items()}
        self.label_attr = label_attr
        self.classes = [str(c) for c in classes]
        self.labels: list[int] = []
        if label_attr is not None:
            index = {c: k for k, c in enumerate(self.classes)}
            for item_id in self.ids:
                value = self.store.item_attrs(item_id).get(label_attr)
                if str(value) not in index:
                    raise ValueError(f"{self.store.path}: item {item_id!r} has {label_attr} = {value!r}, "
                                     f"not one of the classes {self.classes}")
                self.labels.append(index[str(value)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item_id, subject, cond_ids = self.samples[index]
        out: dict[str, Any] = {"codes": read_latent(self.store, item_id), "id": item_id, "subject": subject}
        for name, level in self.levels.items():
            out[name] = read_latent(level, item_id)
        if self.conditions:
            out["condition"] = [read_latent(store, i) for store, ids in zip(self.conditions, cond_ids) for i in ids]
        if self.labels:
            out["label"] = torch.tensor(self.labels[index], dtype=torch.int64)
        return out

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """The samples of a whole batch, as ``__getitem__`` gives them one by one: stacked items (2D latents) are
        read with one selection per stack group of each store instead of one read per item."""
        rows = [self.samples[i] for i in indices]
        ids = [item_id for item_id, _, _ in rows]
        out = [{"codes": _latent(a), "id": item_id, "subject": subject}
               for a, (item_id, subject, _) in zip(self.store.read_many(ids, dtype=None), rows)]
        for name, level in self.levels.items():
            for sample, a in zip(out, level.read_many(ids, dtype=None)):
                sample[name] = _latent(a)
        if self.conditions:  # per store, every condition item of the batch at once; handed out store by store
            read = [iter(store.read_many([i for _, _, cond in rows for i in cond[k]], dtype=None))
                    for k, store in enumerate(self.conditions)]
            for sample, (_, _, cond) in zip(out, rows):
                sample["condition"] = [_latent(next(read[k])) for k, ids in enumerate(cond) for _ in ids]
        for sample, index in zip(out, indices):
            if self.labels:
                sample["label"] = torch.tensor(self.labels[index], dtype=torch.int64)
        return out


def subject_conditions(stores: Sequence[StoreLike], subject: str) -> list[list[str]]:
    """Item ids of ``subject`` in each condition store (every split), ordered by view then id."""
    out = []
    for s in stores:
        store = open_store(s)
        out.append(_view_order(store, store.subjects().get(subject, [])))
    return out


def condition_subjects(stores: Sequence[StoreLike], split: str | None = None) -> list[str]:
    """Subjects with items in every condition store (of ``split`` when given), sorted."""
    common: set[str] | None = None
    for s in stores:
        subjects = set(open_store(s).subjects(split))
        common = subjects if common is None else common & subjects
    return sorted(common or [])


def condition_items(stores: Sequence[StoreLike], split: str | None = None, subject: str | None = None) -> list[str]:
    """Item ids present in every condition store, sorted: of ``split`` (in the first store) and of
    ``subject`` when given, for sampling a prior joined by item."""
    opened = [open_store(s) for s in stores]
    first = opened[0]
    ids = first.subjects().get(subject, []) if subject is not None else first.ids()
    if split is not None:
        in_split = set(first.ids(split))
        ids = [i for i in ids if i in in_split]
    for store in opened[1:]:
        present = set(store.ids())
        ids = [i for i in ids if i in present]
    return sorted(ids)


# ------------------------------------------------------------------------------ continuous latents
class LatentCodec:
    """Stored latents -> the continuous tensors a diffusion prior models, and back to autoencoder units.

    Args:
        codebook: (K, D) codebook of a VQ autoencoder (codes are looked up in it); None for KL
            latents (stored floats are modelled as they are).
        scale: modelled units per autoencoder latent unit: ``latent_scale`` for KL latents (already
            applied when they were stored), ``unit_scale`` of the training codes for VQ latents.
    """

    def __init__(self, codebook: Tensor | None = None, scale: float = 1.0):
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.codebook = None if codebook is None else codebook.detach().float().cpu().clone()
        self.scale = float(scale)

    def channels(self, stored_channels: int | None = None) -> int:
        """Channels of the modelled tensor (the codebook width, else those of the stored floats)."""
        if self.codebook is not None:
            return int(self.codebook.shape[1])
        if stored_channels is None:
            raise ValueError("KL latents: pass the stored channels")
        return int(stored_channels)

    def __call__(self, stored: Tensor) -> Tensor:
        """(B, *grid) integer codes or (B, C, *grid) stored floats -> (B, C, *grid) float32."""
        if self.codebook is None:
            if stored.dtype.is_floating_point:
                return stored.float()
            raise ValueError("these latents are VQ codes; build the codec with the autoencoder's codebook")
        if stored.dtype.is_floating_point:
            raise ValueError(f"expected integer VQ codes, got {stored.dtype}")
        codebook = self.codebook.to(stored.device)
        return F.embedding(stored.long(), codebook).movedim(-1, 1) * self.scale

    def to_autoencoder(self, x: Tensor) -> Tensor:
        """Modelled tensor -> the autoencoder's latent units (what ``decode_latents`` takes)."""
        return x / self.scale


def unit_scale(codebook: Tensor, counts: Tensor) -> float:
    """1 / std of the latent values of codes used ``counts`` (K,) times (all elements pooled)."""
    codebook = codebook.detach().double().cpu()
    weights = counts.double().cpu()
    if weights.sum() <= 0:
        raise ValueError("no codes were counted")
    weights = weights / weights.sum()
    mean = (weights[:, None] * codebook).sum() / codebook.shape[1]
    var = (weights[:, None] * (codebook - mean) ** 2).sum() / codebook.shape[1]
    if not var > 0:
        raise ValueError("the latents of these codes are constant; their scale is undefined")
    return float(var.rsqrt())


def resize_latents(x: Tensor, grid: Sequence[int]) -> Tensor:
    """(B, C, *g) -> (B, C, *grid) by (bi/tri)linear interpolation (unchanged when the sizes agree)."""
    grid = tuple(int(g) for g in grid)
    if tuple(x.shape[2:]) == grid:
        return x
    if len(grid) != x.ndim - 2:
        raise ValueError(f"cannot resize a {x.ndim - 2}D grid {tuple(x.shape[2:])} to the {len(grid)}D grid {grid}")
    return F.interpolate(x, size=grid, mode=_INTERPOLATION[len(grid)], align_corners=False)


def condition_channels(grids: Sequence[Tensor], codecs: Sequence[LatentCodec], grid: Sequence[int]) -> Tensor:
    """Condition grids (one per condition item, batched) -> (B, sum of channels, *grid) on the target's grid."""
    if len(grids) != len(codecs):
        raise ValueError(f"{len(grids)} condition grids but {len(codecs)} codecs")
    return torch.cat([resize_latents(codec(g), grid) for g, codec in zip(grids, codecs)], dim=1)


class ContinuousLatentsDataset(Dataset):
    """A `LatentsDataset` as diffusion training data.

    Each sample is ``{"x0": (C, *grid) float32, "id", "subject"}`` plus ``"cond": (C_cond, *grid)``
    when the base dataset has condition stores (every condition item through the codec of its
    store, resized to ``grid`` and concatenated) and ``"label"`` when it has labels. With ``masks``,
    the label fractions of the item's mask (``masks(source id)``, (L, *grid)) follow the condition
    latents in ``cond`` (or are all of it).

    Args:
        base: the latents dataset (``codes``, ``condition`` and ``label`` as it returns them).
        codec: the codec of the target latents.
        condition_codecs: one codec per condition store of ``base``.
        masks: item id of the data -> (L, *grid) mask channels (a `MaskChannels`), or None.
        spacing: (latent item id, grid) -> (D, *grid) spacing channels (``steps/_spacing_condition.py``),
            appended after the mask channels; or None.
    """

    def __init__(self, base: LatentsDataset, codec: LatentCodec, condition_codecs: Sequence[LatentCodec] = (),
                 masks: Callable[[str], Tensor] | None = None,
                 spacing: Callable[[str, Sequence[int]], Tensor] | None = None):
        if len(condition_codecs) != len(base.conditions):
            raise ValueError(f"{len(base.conditions)} condition stores but {len(condition_codecs)} codecs")
        self.base = base
        self.codec = codec
        self.condition_codecs = list(condition_codecs)
        self.masks = masks
        self.spacing = spacing

    @property
    def samples(self):
        return self.base.samples

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._continuous(index, self.base[index])

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A whole batch, read at once by the base dataset (``LatentsDataset.__getitems__``)."""
        return [self._continuous(i, item) for i, item in zip(indices, self.base.__getitems__(indices))]

    def _continuous(self, index: int, item: dict[str, Any]) -> dict[str, Any]:
        x0 = self.codec(item.pop("codes")[None])[0]
        out = {"x0": x0, **item}
        if "condition" in item:
            counts = [len(ids) for ids in self.base.samples[index][2]]
            codecs = [c for c, n in zip(self.condition_codecs, counts) for _ in range(n)]
            out["cond"] = condition_channels([g[None] for g in out.pop("condition")], codecs, x0.shape[1:])[0]
        if self.masks is not None:
            source = str(self.base.store.item_attrs(item["id"]).get("source_id", item["id"]))
            channels = self.masks(source)
            out["cond"] = torch.cat([out["cond"], channels]) if "cond" in out else channels
        if self.spacing is not None:
            channels = self.spacing(item["id"], x0.shape[1:])
            out["cond"] = torch.cat([out["cond"], channels]) if "cond" in out else channels
        return out

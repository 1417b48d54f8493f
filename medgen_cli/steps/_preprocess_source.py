"""One input of ``medgen preprocess`` -> its items in the stores (runs in worker processes)::

    read (physical units) -> reorient -> resample | fit -> crop/pad -> [derive paired images]
      -> intensity mapping -> volume | slices | sequences -> write items (complete flag last; slices are
      returned to the parent, which writes them stacked: `write_stacked`)

Derived stores hold the same item ids as ``main``: in volume mode the derived volume (DRRs: one item
per view, ``<id>_ap``, ``<id>_lateral``); in slices and sequence modes the derived volume (lowdose,
downsample in-plane) cut at the same slice indices as the main items, so item k of ``lowdose``
pairs with item k of ``main``. A 2D image is one 2D item in volume and slices modes. Each derived store
is made by its entry of the derive registry (`medgen_cli.preprocess.derive_modes`), from the physical
image after the geometry, stored through the main items' mapping unless the mode has its own (DRRs).

Masks (``masks.source``, see ``_preprocess_masks``): the input's label image is resampled with
nearest neighbour straight onto the final grid of the image (store ``masks``) and of each derived
store on another grid (``masks_downsampleF``), then cut like the main items, under the same ids.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from ..io.masks import mask_store_name
from ..meta import ImageMeta, IntensityMapping
from ..io.readers import ReadError, Source, read_source
from ..io.store import Store, as_stored_dtype, store_path
from ..preprocess import derive_modes, intensity, slicing, spatial
from ..preprocess.derive_modes import DeriveContext
from ..settings import PreprocessSettings
from . import _preprocess_masks as masks


STACKED_MODES = ("slices",)  # modes whose 2D items are written stacked (the benchmark compares with ())


def _item_seed(seed: int, item_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(item_id.encode())) % (2**32)


def _normalise(arr: np.ndarray, meta: ImageMeta, s: PreprocessSettings) -> tuple[np.ndarray, ImageMeta]:
    cfg = s.intensity
    method = cfg.normalize
    if method == "auto":
        method = {"CT": "window", "XR": "minmax"}.get(meta.modality, "percentile")
    out_range = tuple(cfg.output_range)
    if method == "window":
        centre, width = intensity.parse_window(cfg.window or "0,2000")  # default: -1000..1000 HU
        return intensity.window(arr, meta, centre, width, out_range=out_range, transform=cfg.transform)
    if method == "percentile":
        low, high = cfg.percentiles
        return intensity.percentile_normalize(arr, meta, low, high, out_range=out_range, transform=cfg.transform)
    if method == "zscore":
        return intensity.zscore(arr, meta)
    if method == "minmax":
        return intensity.minmax(arr, meta, out_range=out_range)
    unit = "HU" if meta.modality == "CT" else "a.u."
    return arr, meta.replace(intensity=IntensityMapping(method="identity", unit=unit))


def _geometry(arr: np.ndarray, meta: ImageMeta, s: PreprocessSettings) -> tuple[np.ndarray, ImageMeta]:
    g = s.geometry
    arr, meta = spatial.reorient(arr, meta, g.orientation)
    background = float(arr.min())
    inplane = s.mode.kind != "volume" and arr.ndim == 3  # fit/shape take the in-plane size
    if g.spacing is not None:
        spacing = tuple(g.spacing) * (arr.ndim if len(g.spacing) == 1 else 1)
        arr, meta = spatial.resample(arr, meta, spacing[: arr.ndim], order=g.interpolation,
                                     antialias=g.antialias, backend=g.backend, fill=background)
    if g.fit is not None and inplane:
        # fit the in-plane axes; the slicing axis keeps its spacing and size
        axes = [a for a in range(3) if a != s.mode.axis]
        extent = [arr.shape[a] * meta.spacing[a] for a in axes]
        iso = max(e / n for e, n in zip(extent, g.fit))
        spacing = [None, None, None]
        for a in axes:
            spacing[a] = iso
        arr, meta = spatial.resample(arr, meta, tuple(spacing), order=g.interpolation, antialias=g.antialias,
                                     backend=g.backend, fill=background)
        arr, meta = spatial.crop_or_pad(arr, meta, _full_size(g.fit, arr, s.mode.axis, True), mode="center",
                                        background=background)
    elif g.fit is not None:
        if len(g.fit) != arr.ndim:
            raise ValueError(f"geometry.fit {tuple(g.fit)} has {len(g.fit)} values but the image has {arr.ndim} axes")
        arr, meta = spatial.fit(arr, meta, tuple(g.fit), order=g.interpolation, antialias=g.antialias,
                                backend=g.backend, background=background)
    if g.shape is not None:
        shape = _full_size(g.shape, arr, s.mode.axis, inplane)
        arr, meta = spatial.crop_or_pad(arr, meta, shape, mode=g.crop, background=background)
    return arr, meta


def _full_size(size: tuple[int, ...], arr: np.ndarray, axis: int, inplane: bool) -> tuple[int, ...]:
    """The target size for every axis: in slices/sequence modes the slicing axis keeps its size."""
    size = tuple(size)
    if inplane:
        if len(size) != 2:
            raise ValueError(f"in slices and sequence modes the size is in-plane (2 values), got {size}")
        full = list(size)
        full.insert(axis, arr.shape[axis])
        return tuple(full)
    if len(size) != arr.ndim:
        raise ValueError(f"size {size} has {len(size)} values but the image has {arr.ndim} axes")
    return size


def _derived(arr_phys: np.ndarray, meta: ImageMeta, s: PreprocessSettings, item_id: str,
             mapping: IntensityMapping) -> dict[str, list[tuple[str, np.ndarray, ImageMeta]]]:
    """Paired images computed from the physical volume, as stored values: {store: [(id, array, meta)]}.
    Each output is made by its entry of the derive registry (`medgen_cli.preprocess.derive_modes`);
    ``mapping`` is the main items' intensity mapping (derived CT images share it)."""
    ctx = DeriveContext(item_id, _item_seed(s.runtime.seed, item_id), s.mode.kind, s.mode.axis,
                        tuple(s.intensity.output_range), mapping, s.derive)
    out = {}
    for spec in s.derive.outputs:
        mode, params = derive_modes.parse_spec(spec)
        out[s.derive.store_name(spec)] = mode.make(arr_phys, meta, params, ctx)
    return out


def _pieces(arr: np.ndarray, meta: ImageMeta, s: PreprocessSettings, item_base: str):
    """The main items of one (normalised) image: the volume, its slices or its sequences."""
    if s.mode.kind == "volume" or arr.ndim == 2:
        return [(item_base, arr, meta)]
    if s.mode.kind == "slices":
        pieces = slicing.extract_slices(arr, meta, axis=s.mode.axis, which=s.mode.slices,
                                        min_foreground=s.mode.min_foreground, background=float(s.intensity.output_range[0]))
        return [(f"{item_base}_s{m.attrs['slice_index']:04d}", a, m) for a, m in pieces]
    pieces = slicing.extract_sequences(arr, meta, axis=s.mode.axis, length=s.mode.length, stride=s.mode.stride)
    return [(f"{item_base}_t{m.attrs['slice_start']:04d}", a, m) for a, m in pieces]


def _pieces_like(arr: np.ndarray, meta: ImageMeta, s: PreprocessSettings, items: list) -> list:
    """A derived volume cut at the slice indices of the main ``items``, under the same ids."""
    if s.mode.kind == "volume" or arr.ndim == 2:
        return [(items[0][0], arr, meta)]
    if s.mode.kind == "slices":
        pieces = slicing.extract_slices(arr, meta, axis=s.mode.axis, min_foreground=0.0,
                                        which=[m.attrs["slice_index"] for _, _, m in items])
    else:
        pieces = slicing.extract_sequences(arr, meta, axis=s.mode.axis, length=s.mode.length, min_foreground=0.0,
                                           starts=[m.attrs["slice_start"] for _, _, m in items])
    return [(item_id, a, m) for (item_id, _, _), (a, m) in zip(items, pieces)]


def _read(source: Source, subject: str, s: PreprocessSettings) -> tuple[np.ndarray, ImageMeta, list[str]]:
    """Read one input and check it can become items; returns (array, meta, warnings)."""
    arr, meta = read_source(source, s.input.modality, max_bytes=int(s.input.max_gib * 2**30),
                            uneven_slices=s.input.uneven_slices)
    meta = meta.replace(subject=subject)
    if arr.ndim == 4:
        raise ReadError(f"{source.path}: a 4D image (shape {arr.shape}) cannot be one item; split its 4th axis into 3D files first")
    if arr.ndim == 2 and s.mode.kind == "sequence":
        raise ReadError(f"{source.path}: is a 2D image (shape {arr.shape}), which has no slices to stack into a "
                        "sequence; use --mode slices or volume for 2D inputs")
    for spec in s.derive.outputs:
        mode, _ = derive_modes.parse_spec(spec)
        if arr.ndim == 2 and mode.needs_3d:
            raise ReadError(f"{source.path}: is a 2D image (shape {arr.shape}); derive output {spec} needs 3D volumes "
                            f"({mode.summary})")
    warnings = []
    if meta.modality == "CT":
        ok, reason = intensity.looks_like_hu(arr)
        if not ok:
            warnings.append(f"{source.path}: declared CT but does not look like HU ({reason})")
    return arr, meta, warnings


def process_source(source: Source, item_base: str, subject: str, split: str, s: PreprocessSettings,
                   artefact: str, mask_path: str | None = None) -> dict[str, Any]:
    """Read, transform and write every item one input yields (and its mask's items). Runs in worker processes.

    Returns ``{"items": {store: [ids]}, "warnings": [...], "ndim": rank of the image read,
    "window_unused": modality when intensity.window was set but not applied (auto mapping, not CT)}``.
    """
    arr, meta, warnings = _read(source, subject, s)
    mask = None
    if mask_path is not None:
        mask = masks.read_mask(mask_path, s)
        warnings += masks.check_overlap(mask, arr.shape, meta, s)
    ndim = arr.ndim
    window_unused = meta.modality if s.intensity.window and s.intensity.normalize == "auto" and meta.modality != "CT" else None
    arr, meta = _geometry(arr, meta, s)
    stored, stored_meta = _normalise(arr, meta, s)
    derived = _derived(arr, meta, s, item_base, stored_meta.intensity)  # derived CT images share main's mapping
    label_volumes = _label_volumes(mask, arr.shape, meta, derived, s) if mask is not None else {}
    del mask  # the labels on their own grid are no longer needed
    arr, meta = stored, stored_meta

    items = _pieces(arr, meta, s, item_base)
    if not items:
        raise ReadError(f"{source.path}: no item left (every slice was below mode.min_foreground, or the volume is shorter than mode.length)")
    if s.mode.kind != "volume":  # one derived volume (lowdose, downsample) -> the main items' pieces
        derived = {name: _pieces_like(d[0][1], d[0][2], s, items) for name, d in derived.items()}
    mask_items = {name: [(i, a, masks.with_counts(a, m)) for i, a, m in _pieces_like(labels, lmeta, s, items)]
                  for name, (labels, lmeta) in label_volumes.items()}

    written: dict[str, list[str]] = {}
    kw = dict(chunks=s.store.chunks, codec=s.store.compressor, level=s.store.level)
    stores = [(name, store_items, s.store.dtype) for name, store_items in [("main", items), *derived.items()]]
    stores += [(name, store_items, "int16") for name, store_items in mask_items.items()]
    stacked = []  # slices: (store, dtype, [(id, stored array, meta)]) for the parent to write (see `stacked_items`)
    for store_name, store_items, dtype in stores:
        written[store_name] = [item_id for item_id, _, _ in store_items]
        if s.mode.kind in STACKED_MODES:
            stacked.append((store_name, dtype, [(i, as_stored_dtype(a, dtype), m) for i, a, m in store_items]))
            continue
        store = Store.create(store_path(artefact, store_name), name=store_name)
        for item_id, a, m in store_items:
            store.write(item_id, a, m, split=split, dtype=dtype, **kw)
    return {"items": {k: v for k, v in written.items() if v}, "warnings": warnings, "ndim": ndim,
            "window_unused": window_unused, "stacked": stacked, "split": split}


def write_stacked(outcome: dict[str, Any], artefact: str, tag: str, s: PreprocessSettings,
                  stores: dict[str, Store]) -> None:
    """Write the slices of one input stacked: one writer (the parent process; ``tag`` names it, e.g. the
    shard ``0of1``) per stack group, one new shard per input and store, complete once its segment is
    written; the caller records the input as done only after this returns. ``stores`` caches the Stores."""
    for store_name, dtype, store_items in outcome.pop("stacked", []):
        if store_name not in stores:
            stores[store_name] = Store.create(store_path(artefact, store_name), name=store_name)
        writer = stores[store_name].stack_writer(tag, codec=s.store.compressor, level=s.store.level)
        for item_id, a, m in store_items:
            writer.add(item_id, a, m, dtype=dtype, split=outcome["split"])
        writer.flush()


def _label_volumes(mask: masks.Mask, shape: tuple[int, ...], meta: ImageMeta, derived: dict, s: PreprocessSettings
                   ) -> dict[str, tuple[np.ndarray, ImageMeta]]:
    """The mask on the final grid of the image (store ``masks``) and of each derived store whose derive mode
    has masks of its own grid (``masks_downsampleF``), each straight from the mask's own grid (one
    nearest-neighbour rounding); modes on main's grid (lowdose) pair with ``masks``, DRRs have none."""
    out = {mask_store_name("main"): masks.on_grid(mask, shape, meta)}
    for spec in s.derive.outputs:
        name = s.derive.store_name(spec)
        target = mask_store_name(name)
        if derive_modes.parse_spec(spec)[0].masks == "own" and target not in out:
            _, a, m = derived[name][0]
            out[target] = masks.on_grid(mask, a.shape, m)
    return out


def safe_process(*args) -> tuple[dict[str, Any] | None, str | None]:
    """Run one input; a bad input becomes a one-line reason instead of an exception."""
    try:
        return process_source(*args), None
    except ReadError as err:
        return None, str(err)
    except (ValueError, RuntimeError, OSError, MemoryError) as err:
        return None, f"{args[0].path}: {type(err).__name__}: {err}"


def pipeline_description(s: PreprocessSettings) -> list[dict[str, Any]]:
    """The functions applied, with their parameters, for the manifest."""
    g, i = s.geometry, s.intensity
    steps: list[dict[str, Any]] = [{"fn": "read", "modality": s.input.modality},
                                   {"fn": "spatial.reorient", "target": g.orientation}]
    if g.spacing:
        steps.append({"fn": "spatial.resample", "spacing": list(g.spacing), "order": g.interpolation,
                      "antialias": g.antialias, "backend": g.backend})
    if g.fit:
        steps.append({"fn": "spatial.fit", "size": list(g.fit), "order": g.interpolation})
    if g.shape:
        steps.append({"fn": "spatial.crop_or_pad", "shape": list(g.shape), "mode": g.crop})
    for d in s.derive.outputs:
        steps.append({"fn": f"derive.{derive_modes.parse_spec(d)[0].name}", "spec": d})
    steps.append({"fn": f"intensity.{i.normalize}", "window": i.window, "percentiles": list(i.percentiles),
                  "output_range": list(i.output_range), "transform": i.transform})
    if s.mode.kind != "volume":
        steps.append({"fn": f"slicing.{s.mode.kind}", **s.mode.model_dump()})
    if s.masks.source:
        steps.append({"fn": "labels.resample_labels", "source": s.masks.source, "order": "nearest",
                      "onto": "each item's final grid", "missing": s.masks.missing})
    return steps

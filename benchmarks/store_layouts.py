"""Per-item vs stacked store layout (issue 14), for `benchmarks.bench_store`.

Synthetic 64^2 float16 slices (100 per subject, origin moving along z) written in both layouts; then:
write items/s; `ItemDataset` + `make_loader` read items/s (batch 64, shuffled, 0 and 2 workers);
`encode-latents` items/s with a tiny 2D VQ-VAE through the step's own `run`; `LatentsDataset` read items/s of
those codes, a batch at a time or item by item; `preprocess --mode slices`
of the pyradiomics lung CT (seconds per slice); files on disk per 10k items. The old layout is the
per-item one medgen wrote before (``Store.write``; for preprocess ``STACKED_MODES = ()``, for encode
no stack writers), measured on ``old_items`` items (its costs are per item).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np

SIZE = 64
PER_SUBJECT = 100
BATCH = 64
CT = Path(os.environ.get("MEDGEN_DATA", Path.home() / ".cache" / "medgen" / "data")) / "lung1_image.nrrd"


def _items(n: int, seed: int = 0):
    from medgen_cli.meta import ImageMeta, IntensityMapping

    mapping = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, SIZE), np.linspace(-1, 1, SIZE), indexing="ij")
    body = ((x / 0.8) ** 2 + (y / 0.6) ** 2 < 1).astype(np.float32)
    for k in range(n):
        subject, z = divmod(k, PER_SUBJECT)
        affine = np.diag([1.5, 1.5, 2.0, 1.0])
        affine[2, 3] = 2.0 * z
        split = ("train",) * 8 + ("val", "test")
        meta = ImageMeta(affine=affine, modality="CT", subject=f"sub{subject:04d}", intensity=mapping,
                         attrs={"slice_index": z})
        img = body * (0.2 + 0.1 * np.sin(z / 9.0)) - 1 + 0.05 * rng.standard_normal((SIZE, SIZE), np.float32)
        yield f"sub{subject:04d}_s{z:04d}", img, meta, split[subject % 10]


def _objects(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _prep(path: Path, n: int, stacked: bool) -> dict:
    """A preprocessed artefact of ``n`` synthetic slices in one layout; its write time and files."""
    from medgen_cli.artefacts import ArtefactWriter
    from medgen_cli.io.store import Store, store_path

    writer = ArtefactWriter(path, "preprocessed", {})
    store = Store.create(store_path(writer.open()))
    t = time.perf_counter()
    if stacked:
        stack = store.stack_writer()
        for item_id, img, meta, split in _items(n):
            stack.add(item_id, img, meta, dtype="float16", split=split)
        stack.flush()
    else:
        for item_id, img, meta, split in _items(n):
            store.write(item_id, img, meta, dtype="float16", split=split)
    seconds = time.perf_counter() - t
    writer.commit({})
    files, size = _objects(path / "main.zarr")
    return {"items": n, "write_s": round(seconds, 2), "write_items_per_s": round(n / seconds, 1),
            "files": files, "files_per_10k_items": round(files * 1e4 / n, 1), "MB": round(size / 1e6, 2)}


def _read(prep: Path, workers: int, max_batches: int) -> dict:
    """Shuffled batches of 64 through ItemDataset + make_loader (the path train-ae takes)."""
    from medgen_cli.data import ItemDataset
    from medgen_cli.data.loader import make_loader

    t = time.perf_counter()
    dataset = ItemDataset(prep / "main.zarr")
    opened = time.perf_counter() - t
    loader = make_loader(dataset, BATCH, shuffle=True, seed=0, num_workers=workers)
    return {"workers": workers, **_timed(loader, max_batches), "open_s": round(opened, 2)}


def _timed(loader, max_batches: int) -> dict:
    """Items and items/s of up to ``max_batches`` batches; worker start-up and the first batch are not counted."""
    it = iter(loader)
    next(it)
    t, n = time.perf_counter(), 0
    for k, batch in enumerate(it):
        n += len(batch["id"])
        if k + 2 >= max_batches:
            break
    seconds = time.perf_counter() - t
    del it
    return {"items": n, "items_per_s": round(n / seconds, 1)}


def _read_latents(lat: Path, batched: bool, max_batches: int) -> dict:
    """Shuffled batches of 64 codes through LatentsDataset + make_loader (the path train-prior takes), read a
    batch at a time (``__getitems__``) or item by item (the dataset seen through ``__getitem__`` only)."""
    from torch.utils.data import Dataset

    from medgen_cli.data.latents import LatentsDataset
    from medgen_cli.data.loader import make_loader

    class ItemByItem(Dataset):
        def __init__(self, base):
            self.base = base

        def __len__(self):
            return len(self.base)

        def __getitem__(self, index):
            return self.base[index]

    dataset = LatentsDataset(lat / "main.zarr")
    loader = make_loader(dataset if batched else ItemByItem(dataset), BATCH, shuffle=True, seed=0, num_workers=0)
    return {"batched": batched, **_timed(loader, max_batches)}


def _autoencoder(root: Path) -> Path:
    from medgen_cli.settings import load_settings
    from medgen_cli.settings.train import TrainAESettings
    from medgen_cli.steps import train_ae

    prep = root / "ae_prep"
    _prep(prep, 64, stacked=True)
    settings = load_settings(TrainAESettings, None, [
        f"data.path={prep}", "model.kind=vqvae", "model.channels=8,8", "model.num_res_blocks=1",
        "model.embedding_dim=8", "model.num_embeddings=32", "data.batch_size=4", "train.steps=1",
        "train.val_every=0", "train.save_images=0", "runtime.device=cpu"])
    train_ae.run(settings, root / "ae")
    return root / "ae"


def _encode(ae: Path, prep: Path, out: Path, stacked: bool) -> dict:
    from medgen_cli.settings import EncodeSettings, load_settings
    from medgen_cli.steps import encode_latents

    settings = load_settings(EncodeSettings, None, [f"ae={ae}", f"data={prep}", "store=main", "batch_size=256",
                                                    "runtime.device=cpu"])

    @contextlib.contextmanager
    def per_item(levels, spatial_dims):
        yield {}

    original = encode_latents._stacked_writers
    encode_latents._stacked_writers = original if stacked else per_item
    try:
        t = time.perf_counter()
        result = encode_latents.run(settings, out, overwrite=True)
        seconds = time.perf_counter() - t
    finally:
        encode_latents._stacked_writers = original
    files, _ = _objects(out / "main.zarr")
    return {"items": result.encoded, "seconds": round(seconds, 2), "items_per_s": round(result.encoded / seconds, 1),
            "files_per_10k_items": round(files * 1e4 / result.encoded, 1)}


def _preprocess(out: Path, stacked: bool, fit: int) -> dict:
    """`preprocess --mode slices` of the lung CT, in this process; seconds per slice."""
    from medgen_cli.settings import PreprocessSettings, load_settings
    from medgen_cli.steps import _preprocess_source, preprocess

    settings = load_settings(PreprocessSettings, None, ["mode.kind=slices", "input.modality=CT",
                                                        "intensity.window=lung", f"geometry.fit=[{fit},{fit}]"],
                             {"input.paths": [str(CT)]})
    original = _preprocess_source.STACKED_MODES
    _preprocess_source.STACKED_MODES = original if stacked else ()
    try:
        t = time.perf_counter()
        result = preprocess.run(settings, out, overwrite=True)
        seconds = time.perf_counter() - t
    finally:
        _preprocess_source.STACKED_MODES = original
    n = result.items["main"]
    files, _ = _objects(out / "main.zarr")
    return {"slices": n, "seconds": round(seconds, 2), "ms_per_slice": round(1000 * seconds / n, 2), "files": files}


def run(root: Path, items: int, old_items: int, max_batches: int) -> dict:
    """Every measurement, old layout next to the new one."""
    out: dict = {"item": f"{SIZE}x{SIZE} float16", "batch_size": BATCH}
    new_prep, old_prep = root / "new", root / "old"
    out["write"] = {"stacked": _prep(new_prep, items, True), "per_item": _prep(old_prep, old_items, False)}
    print("write", out["write"], flush=True)
    out["read"] = {layout: [_read(p, w, max_batches) for w in (0, 1, 2)]
                   for layout, p in (("stacked", new_prep), ("per_item", old_prep))}
    print("read", out["read"], flush=True)
    ae = _autoencoder(root)
    out["encode_latents"] = {"stacked": _encode(ae, new_prep, root / "lat_new", True),
                             "per_item": _encode(ae, old_prep, root / "lat_old", False)}
    print("encode", out["encode_latents"], flush=True)
    out["read_latents"] = [_read_latents(root / "lat_new", b, max_batches) for b in (True, False)]
    print("read latents", out["read_latents"], flush=True)
    if CT.exists():
        runs = {"stacked": [], "per_item": []}
        for _ in range(2):  # alternate, keep the faster of two runs of each (file cache, warm imports)
            runs["stacked"].append(_preprocess(root / "pp_new", True, 128))
            runs["per_item"].append(_preprocess(root / "pp_old", False, 128))
        out["preprocess_slices"] = {"input": f"{CT.name}, slices fitted to 128^2",
                                    **{k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}}
        print("preprocess", out["preprocess_slices"], flush=True)
    else:
        out["preprocess_slices"] = {"skipped": f"{CT} is absent (make data)"}
    return out

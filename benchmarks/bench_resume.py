"""Resume cost of ``medgen encode-latents``: a fresh run against resuming one with 10% of the items left.

Before issue 11 every completion check listed the whole output store, so resuming 1,044 items took
8.7 min against 26 s for a fresh run. Here N (default 1,000) 32^2 items are encoded with a tiny 2D
VQ-VAE (trained for one step: the model's quality is beside the point), once from scratch and once
resuming a copy of a run interrupted after 90% of the items. Reported: median wall times, their
ratio (ideally about the share left, plus the fixed cost of loading the model and writing the
summary), the items the resumed run encoded and the key listings it made (wrapping zarr's
``LocalStore`` listing methods). Writes ``benchmarks/results/resume.json``.

Run: ``.venv/bin/python -m benchmarks.bench_resume [--items 1000] [--left 0.1] [--repeats 1]``
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from zarr.storage import LocalStore

from benchmarks.common import ForeignLoad, write_result
from medgen_cli.artefacts import ArtefactWriter
from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.io.store import Store, store_path
from medgen_cli.settings import EncodeSettings, TrainAESettings, load_settings
from medgen_cli.steps import encode_latents, train_ae

WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)


def make_data(path: Path, n: int, size: int) -> Path:
    """A preprocessed artefact of ``n`` 2D items (soft discs at random places), 90% train."""
    rng = np.random.default_rng(0)
    writer = ArtefactWriter(path, "preprocessed", {})
    store = Store.create(store_path(writer.open()))
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 2, indexing="ij"))
    for i in range(n):
        centre = rng.uniform(-0.4, 0.4, (2, 1, 1))
        image = np.tanh(4 * (0.5 - np.sqrt(((grid - centre) ** 2).sum(0)))).astype(np.float32)
        store.write(f"item{i:05d}", image, ImageMeta(subject=f"s{i // 10:04d}", intensity=WINDOW), dtype="float16",
                    split="train" if i % 10 else "val")
    writer.commit({})
    return path


class Listings:
    """Counts key listings of local zarr stores while active."""

    def __enter__(self) -> "Listings":
        self.count, self._saved = 0, {}
        for name in ("list_dir", "list_prefix", "list"):
            original = self._saved[name] = getattr(LocalStore, name)

            def counted(store, *args, _original=original, **kwargs):
                self.count += 1
                return _original(store, *args, **kwargs)

            setattr(LocalStore, name, counted)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(LocalStore, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--left", type=float, default=0.1, help="share of the items the resumed run has left")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("medgen_cli").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench_resume_"))
    try:
        result = run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    path = write_result("resume", result)
    print(json.dumps(result, indent=2))
    print(f"resume / fresh = {result['ratio_resume_to_fresh']} with {args.left:.0%} of {args.items} items left")
    print(f"wrote {path}")


def run(root: Path, args) -> dict:
    t0 = time.perf_counter()
    data = make_data(root / "prep", args.items, args.size)
    setup_data_s = time.perf_counter() - t0
    train_ae.run(load_settings(TrainAESettings, None, [
        f"data.path={data}", "model.kind=vqvae", "model.channels=8,8", "model.num_res_blocks=1", "model.embedding_dim=8",
        "model.num_embeddings=32", "data.batch_size=4", "train.steps=1", "train.val_every=0", "train.save_images=0",
        "runtime.device=cpu"]), root / "ae")
    settings = load_settings(EncodeSettings, None, [f"ae={root / 'ae'}", f"data={data}", f"batch_size={args.batch_size}",
                                                    "runtime.device=cpu"])
    # interrupt after the batch that reaches (1 - left) of the items: a whole number of batches
    stop_at = max(args.batch_size, int(args.items * (1 - args.left)) // args.batch_size * args.batch_size)
    if stop_at >= args.items:
        raise SystemExit(f"--items {args.items} with --batch-size {args.batch_size} leaves nothing to resume")

    def interrupt(done, total, text):
        if done >= stop_at:
            raise KeyboardInterrupt

    try:  # the interrupted run whose partial every timed resume starts from
        encode_latents.run(settings, root / "interrupted", progress=interrupt)
    except KeyboardInterrupt:
        pass
    done_before = len(Store.open(store_path(root / "interrupted.partial")).ids())

    fresh, resume, shares, listings, encoded = [], [], [], [], []
    for r in range(args.repeats):
        with ForeignLoad() as load:
            t = time.perf_counter()
            encode_latents.run(settings, root / f"fresh{r}")
            fresh.append(time.perf_counter() - t)
        shares.append(load.share)
        shutil.copytree(root / "interrupted.partial", root / f"resumed{r}.partial")
        with ForeignLoad() as load, Listings() as count:
            t = time.perf_counter()
            out = encode_latents.run(settings, root / f"resumed{r}")
            resume.append(time.perf_counter() - t)
        shares.append(load.share)
        listings.append(count.count)
        encoded.append(out.encoded)
        assert out.skipped == done_before and out.encoded == args.items - done_before
    f, s = statistics.median(fresh), statistics.median(resume)
    return {
        "task": f"encode-latents of {args.items} {args.size}x{args.size} items (tiny 2D VQ-VAE, batch {args.batch_size}, "
                f"1 torch thread): fresh vs resume with {args.items - done_before} left",
        "items": args.items, "items_left": args.items - done_before, "repeats": args.repeats,
        "fresh_s": round(f, 2), "resume_s": round(s, 2), "ratio_resume_to_fresh": round(s / f, 3),
        "share_left": round((args.items - done_before) / args.items, 3),
        "resume_items_encoded": encoded, "resume_key_listings": listings,
        "times_s": {"fresh": [round(v, 2) for v in fresh], "resume": [round(v, 2) for v in resume]},
        "setup_data_s": round(setup_data_s, 1), "foreign_cpu_share_max": round(max(shares), 3),
    }


if __name__ == "__main__":
    main()

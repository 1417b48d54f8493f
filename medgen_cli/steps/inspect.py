"""``medgen inspect DIR``: what an artefact is, its key settings, its lineage and its stores.

A preprocessed artefact made with ``--masks`` also shows its masks: the pairing rule, which mask store
pairs with which image store, and every label with its voxel count and the number of items holding it.

``--check`` (``run(path, check=True)``) also decodes every chunk of every item of every store of the
artefact (`Store.check`) and raises `StepFailed` naming the damaged items when there are any.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..artefacts import lineage, read_manifest
from ..errors import StepFailed
from ..io.masks import is_mask_store, label_summary
from ..io import fs
from ..io.store import WRITERS, DamagedStore, Store, store_path

log = logging.getLogger(__name__)

MAX_LISTED = 20  # damaged items named in the error sentence

KEY_SETTINGS = {
    "preprocessed": ["mode.kind", "geometry.orientation", "geometry.spacing", "geometry.fit", "geometry.shape",
                     "intensity.normalize", "intensity.window", "store.dtype", "store.compressor", "derive.outputs"],
    "autoencoder": ["model.kind", "model.channels", "model.num_res_blocks", "model.downsample", "model.num_embeddings",
                    "model.embedding_dim", "model.latent_channels", "loss.l1", "loss.l2", "loss.ms_ssim",
                    "adversarial.enabled", "optim.lr", "train.steps", "train.max_minutes", "train.select"],
}


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run(path: Path | str, check: bool = False) -> dict[str, Any]:
    """Collect everything `inspect` shows as a JSON-able dict.

    Args:
        path: the artefact directory.
        check: also verify every chunk of every store (``report["check"]``).

    Raises:
        StepFailed: ``check`` found damage; the sentence names the first damaged items and the count, and
            the exception's ``report`` attribute holds the whole report.
    """
    path = fs.location(path)  # a directory or a URL (s3://...)
    manifest = read_manifest(path)
    keys = KEY_SETTINGS.get(manifest.kind, [])
    report: dict[str, Any] = {
        "path": str(path),
        "kind": manifest.kind,
        "status": manifest.status,
        "created": manifest.created,
        "medgen_version": manifest.medgen_version,
        "schema_version": manifest.schema_version,
        "key_settings": {k: _get(manifest.settings, k) for k in keys if _get(manifest.settings, k) not in (None, [])},
        "lineage": lineage(path),
        "stores": {},
        "summary": {k: v for k, v in manifest.summary.items() if k not in ("stores", "splits", "pipeline", "masks")},
    }
    labels = {}
    for name in _store_names(path):
        try:
            store = Store.open(store_path(path, name))
            report["stores"][name] = store.summary()
            if is_mask_store(name):
                labels[name] = label_summary(store)
        except ValueError as err:
            report["stores"][name] = {"error": str(err)}
    if labels or "masks" in manifest.summary:
        recorded = manifest.summary.get("masks") or {}
        report["masks"] = {"source": recorded.get("source"), "pairs": recorded.get("pairs", {}), "stores": labels,
                           "skipped_no_mask": recorded.get("skipped_no_mask", 0)}
    if check:
        report["check"] = check_stores(path, manifest.kind)
        damaged = report["check"]["damaged"]
        if damaged:
            err = StepFailed(_damage_sentence(path, manifest.kind, report["check"]))
            err.report = report
            raise err
    return report


def _store_names(path: Path | str) -> list[str]:
    """The names of an artefact's stores (``<name>.zarr``), sorted."""
    return fs.store_names(path)


def check_stores(path: Path | str, kind: str) -> dict[str, Any]:
    """Decode every chunk of every store of an artefact: ``{"stores": {name: counts}, "items", "chunks",
    "damaged": [{"store", "item", "reason"}, ...]}`` (item None: the store itself is unreadable)."""
    out: dict[str, Any] = {"stores": {}, "items": 0, "chunks": 0, "damaged": []}
    for stem in _store_names(path):
        zname = f"{stem}.zarr"
        try:
            result = Store.open(store_path(path, stem)).check()
        except DamagedStore as err:
            out["damaged"].append({"store": zname, "item": None, "reason": str(err)})
            continue
        except ValueError as err:  # not a medgen store at all
            out["damaged"].append({"store": zname, "item": None, "reason": str(err)})
            continue
        out["stores"][stem] = {k: v for k, v in result.items() if k != "damaged"}
        out["items"] += result["items"]
        out["chunks"] += result["chunks"]
        out["damaged"] += [{"store": zname, "item": i, "reason": r} for i, r in result["damaged"].items()]
        log.info("checked %s: %d item(s), %d chunk(s), %d damaged", zname, result["items"], result["chunks"],
                 len(result["damaged"]))
    return out


def _damage_sentence(path: Path, kind: str, check: dict[str, Any]) -> str:
    damaged = check["damaged"]
    named = ", ".join(f"{d['store']} item {d['item']} ({d['reason']})" if d["item"] is not None
                      else f"{d['store']} ({d['reason'].rstrip('.')})" for d in damaged[:MAX_LISTED])
    more = f" and {len(damaged) - MAX_LISTED} more" if len(damaged) > MAX_LISTED else ""
    step = f"re-run medgen {WRITERS[kind]}" if kind in WRITERS else "re-run the step that wrote it"
    return (f"{path}: {len(damaged)} damaged item(s) or store(s) of {check['items']} item(s) checked: "
            f"{named}{more}; {step} to rebuild the artefact.")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def render(report: dict[str, Any], console) -> None:
    """Print the report as rich tables."""
    from rich.table import Table
    from rich.tree import Tree

    status = "[green]complete[/]" if report["status"] == "complete" else f"[yellow]{report['status']}[/]"
    console.print(f"[bold]{report['path']}[/]: {report['kind']} ({status}), created {report['created']} "
                  f"by medgen {report['medgen_version']} (schema {report['schema_version']})")
    if report["key_settings"]:
        table = Table(title="key settings", show_header=False, title_justify="left")
        for k, v in report["key_settings"].items():
            table.add_row(k, str(v))
        console.print(table)
    for name, st in report["stores"].items():
        if "error" in st:
            console.print(f"store {name}: [red]{st['error']}[/]")
            continue
        table = Table(title=f"store {name}.zarr", show_header=False, title_justify="left")
        table.add_row("items", f"{st['items']} from {st['subjects']} subjects"
                      + (f" ({st['incomplete_items']} incomplete)" if st["incomplete_items"] else ""))
        table.add_row("splits", ", ".join(f"{k or '-'}: {v}" for k, v in st["splits"].items()))
        table.add_row("shapes", ", ".join(f"{k} ({v})" for k, v in st["shapes"].items()))
        table.add_row("dtypes", ", ".join(st["dtypes"]))
        table.add_row("modality", ", ".join(st["modalities"]))
        mappings = list(st.get("intensity", {}))
        if mappings:
            table.add_row("intensity", mappings[0] if len(mappings) == 1 else f"{len(mappings)} per-item mappings, e.g. {mappings[0]}")
        table.add_row("spacing (mm)", f"{st['spacing_min']} .. {st['spacing_max']}")
        table.add_row("size on disk", f"{_size(st['bytes_stored'])} ({_size(st['bytes_raw'])} raw, ratio {st['compression_ratio']})")
        console.print(table)
    if "masks" in report:
        _render_masks(report["masks"], console)
    facts = {k: v for k, v in _flatten(report["summary"]).items() if k != "failed" and not isinstance(v, (list, dict))}
    if facts:
        table = Table(title="summary", show_header=False, title_justify="left")
        for k, v in facts.items():
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        console.print(table)
    failed = report["summary"].get("failed") or []
    for path, reason in failed:
        console.print(f"[red]failed input[/] {path}: {reason}", highlight=False)
    tree = Tree("lineage")
    _add_lineage(tree, report["lineage"])
    console.print(tree)
    if "check" in report:
        _render_check(report["check"], console)


def _render_masks(masks: dict[str, Any], console) -> None:
    """The masks table: rule, pairs, and per mask store each label's voxels and items."""
    from rich.table import Table

    table = Table(title="masks", show_header=False, title_justify="left")
    if masks.get("source"):
        table.add_row("rule", str(masks["source"]))
    if masks.get("pairs"):
        table.add_row("pairs", ", ".join(f"{image} -> {m}" for image, m in masks["pairs"].items()) + " (by item id)")
    for name, st in masks["stores"].items():
        rows = [f"{label}: {voxels:,} voxels in {st['items_per_label'].get(label, 0)} item(s)"
                for label, voxels in st["labels"].items()]
        table.add_row(f"{name} labels", "\n".join(rows) or "none (no items)")
    if masks.get("skipped_no_mask"):
        table.add_row("inputs without a mask", f"{masks['skipped_no_mask']} (left out; see report.json)")
    console.print(table)


def _render_check(check: dict[str, Any], console) -> None:
    from rich.markup import escape

    console.print(f"check: {check['items']} item(s), {check['chunks']} chunk(s) decoded in "
                  f"{len(check['stores'])} store(s)")
    for d in check["damaged"][:MAX_LISTED]:
        where = f"{d['store']} item {d['item']}" if d["item"] is not None else d["store"]
        console.print(f"[red]damaged[/] {escape(where)}: {escape(d['reason'])}", highlight=False)
    if len(check["damaged"]) > MAX_LISTED:
        console.print(f"[red]... and {len(check['damaged']) - MAX_LISTED} more damaged item(s)[/]")
    if not check["damaged"]:
        console.print("[green]no damage found[/]")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k not in ("splits",):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _add_lineage(tree, node: dict[str, Any]) -> None:
    label = f"{node.get('role', 'this')}: {node['path']} ({node.get('kind', '?')})"
    if node.get("cycle"):  # an artefact listed among its own ancestors: one line, not the loop again
        label += f" (cycle: {node['path']} already shown)"
    if node.get("truncated"):
        label += " (lineage truncated here)"
    if node.get("changed"):
        label += " [yellow](changed since it was read)[/]"
    if node.get("error"):
        label += f" [red]{node['error']}[/]"
    branch = tree.add(label)
    for child in node.get("inputs", []):
        _add_lineage(branch, child)

"""``medgen inspect DIR``: what an artefact is, its key settings, its lineage and its stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artefacts import lineage, read_manifest
from ..io.store import Store

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


def run(path: Path | str) -> dict[str, Any]:
    """Collect everything `inspect` shows as a JSON-able dict."""
    path = Path(path)
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
        "summary": {k: v for k, v in manifest.summary.items() if k not in ("stores", "splits", "pipeline")},
    }
    for zdir in sorted(path.glob("*.zarr")):
        try:
            report["stores"][zdir.stem] = Store.open(zdir).summary()
        except ValueError as err:
            report["stores"][zdir.stem] = {"error": str(err)}
    return report


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
    if node.get("changed"):
        label += " [yellow](changed since it was read)[/]"
    if node.get("error"):
        label += f" [red]{node['error']}[/]"
    branch = tree.add(label)
    for child in node.get("inputs", []):
        _add_lineage(branch, child)

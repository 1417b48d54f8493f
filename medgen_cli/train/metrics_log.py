"""``metrics.jsonl`` (one JSON record per line) and a PNG plot of its losses and metrics.

Each record is ``{"step": int, "phase": "train" | "val", <name>: float, ...}``. A resumed run
first drops the records written after its checkpoint, so the log of a resumed run equals the log
of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLog:
    """Append-only JSON-lines writer.

    Args:
        path: the ``metrics.jsonl`` file.
        enabled: False on non-main ranks (writing is a no-op).
    """

    def __init__(self, path: Path | str, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, step: int, phase: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "phase": phase, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step`` greater than ``step`` (resuming from that step)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (a torn last line is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping a damaged line of %s", path)
    return out

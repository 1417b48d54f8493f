"""CT display windows: the one table of presets and the one parser of ``--window`` (pure Python, no IO).

Used by the settings (validation), preprocessing (`medgen_cli.preprocess.intensity.window`) and the CLI help.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Standard CT display windows, (centre, width) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "pulmonary-vessels": (200.0, 1800.0),
}


def preset_list() -> str:
    """The preset names, comma-separated (for help texts and messages)."""
    return ", ".join(WINDOW_PRESETS)


def parse_window(spec: str | Sequence[float]) -> tuple[float, float]:
    """Parse a window given as a preset name (``"lung"``) or ``"centre,width"`` (``"40,400"``).

    Args:
        spec: preset name, ``"C,W"`` string, or a ``(centre, width)`` pair.

    Returns:
        ``(centre, width)`` in HU.

    Raises:
        ValueError: neither a preset nor two numbers, or a width that is not positive and finite.
    """
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in WINDOW_PRESETS:
            return WINDOW_PRESETS[key]
        parts = key.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            center, width = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"window {spec!r} is neither a preset ({preset_list()}) "
                             "nor 'centre,width' such as '40,400'") from None
    else:
        try:
            center, width = (float(v) for v in spec)
        except (TypeError, ValueError):
            raise ValueError(f"window {spec!r} must be a preset name or a (centre, width) pair") from None
    if not math.isfinite(center) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"window needs a finite centre and a width > 0, got centre={center}, width={width}")
    return center, width

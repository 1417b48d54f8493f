"""Settings of ``medgen preprocess``."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import FloatTuple, IntTuple, Section
from ..preprocess import derive_modes
from ..windows import WINDOW_PRESETS, parse_window, preset_list
from .common import RuntimeSettings, SplitSettings, StoreSettings

MASK_RULE_KINDS = ("suffix", "csv", "pattern")


class InputSettings(Section):
    """What to read. Subject ids come from ``subject_csv``, else ``subject_pattern``, else the BIDS
    ``sub-<label>`` of the path, else the file name."""

    paths: list[str] = Field(default_factory=list, description="Input files, directories or glob patterns.")
    subject_pattern: str | None = Field(
        None, description="Regex on the file path whose group 'subject' (or first group) is the subject id; without it\n"
        "the subject is the BIDS sub-<label> of the path (sessions stay in the item id), else the file name."
    )
    subject_csv: str | None = Field(None, description="CSV with columns path,subject[,split]: the subject of each input (every input\n"
        "must be listed, by path or file name); a non-empty split (train, val or test) pins that subject, the others follow split.fractions.")
    modality: Literal["auto", "CT", "MR", "XR", "OT"] = Field(
        "auto", description="Modality; auto reads it from DICOM/NRRD headers or guesses from the values."
    )
    dicom_series: str = Field("all", description="DICOM: 'all' makes each series an item; otherwise a SeriesInstanceUID.")
    max_gib: float = Field(
        4.0, gt=0, description="Refuse an input whose decoded image (from its header, before reading) exceeds this many GiB."
    )
    uneven_slices: Literal["error", "resample"] = Field(
        "error", description="DICOM series with a missing slice or uneven slice positions: error names the gap; "
        "resample interpolates onto a regular grid."
    )

    @field_validator("subject_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as err:
                raise ValueError(f"not a valid regular expression ({err})") from None
        return v


class GeometrySettings(Section):
    orientation: str = Field("RAS", description="Canonical orientation of the voxel axes (3 letters, e.g. RAS, LPS).")
    spacing: FloatTuple | None = Field(None, description="Resample to this spacing in mm (one value = isotropic).")
    fit: IntTuple | None = Field(
        None, description="Scale to fit this size keeping the aspect ratio, then pad to it exactly (in-plane in slices/sequence modes)."
    )
    shape: IntTuple | None = Field(None, description="Finally crop or pad to exactly this shape.")
    crop: Literal["center", "foreground"] = Field("center", description="Where --shape crops: the centre or the foreground bounding box.")
    interpolation: Literal["linear", "nearest", "bspline"] = Field("linear", description="Interpolation for resampling.")
    antialias: bool = Field(True, description="Gaussian pre-filter when downsampling.")
    backend: Literal["auto", "sitk", "torch"] = Field("auto", description="Resampling engine; auto uses the benchmark's choice.")

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, v: str) -> str:
        v = v.upper()
        axis_of = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        if len(v) != 3 or sorted(axis_of.get(c, -1) for c in v) != [0, 1, 2]:
            raise ValueError("needs one letter from each of L/R, A/P and S/I, e.g. RAS or LPS")
        return v

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, v):
        if v is not None and (len(v) not in (1, 2, 3) or any(s <= 0 for s in v)):
            raise ValueError("needs 1 to 3 positive numbers (mm)")
        return v

    @field_validator("fit", "shape")
    @classmethod
    def _positive_shape(cls, v):
        if v is not None and (len(v) not in (2, 3) or any(s <= 0 for s in v)):
            raise ValueError("needs 2 or 3 positive integers")
        return v

    @model_validator(mode="after")
    def _spacing_or_fit(self):
        if self.spacing is not None and self.fit is not None:
            raise ValueError("geometry.spacing and geometry.fit exclude each other: pick one")
        return self

class IntensitySettings(Section):
    normalize: Literal["auto", "window", "percentile", "zscore", "minmax", "none"] = Field(
        "auto", description="auto: window for CT (needs intensity.window), percentile for MR, minmax for X-ray."
    )
    window: str | None = Field(
        None, description="CT window 'centre,width' in HU or a preset: " + preset_list() + "."
    )
    percentiles: FloatTuple = Field((0.5, 99.5), description="Percentile clipping for MR (low, high).")
    output_range: FloatTuple = Field((-1.0, 1.0), description="Stored value range: -1,1 or 0,1.")
    transform: Literal["linear", "log"] = Field("linear", description="Mapping from physical to stored values.")

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is None or v in WINDOW_PRESETS:
            return v
        centre, width = parse_window(str(v))
        return f"{centre:g},{width:g}"

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, v):
        if len(v) != 2 or not 0 <= v[0] < v[1] <= 100:
            raise ValueError("needs two percentiles low,high with 0 <= low < high <= 100")
        return v

    @field_validator("output_range")
    @classmethod
    def _range(cls, v):
        if tuple(v) not in {(-1.0, 1.0), (0.0, 1.0)}:
            raise ValueError("must be -1,1 or 0,1")
        return v


class ModeSettings(Section):
    kind: Literal["volume", "slices", "sequence"] = Field(
        "volume", description="volume: 3D items; slices: 2D items; sequence: stacks of consecutive slices (2D+T)."
    )
    axis: int = Field(2, ge=0, le=2, description="Slicing axis after reorientation (2 = axial for RAS).")
    slices: Literal["center", "all"] = Field("all", description="slices mode: the centre slice or every slice.")
    min_foreground: float = Field(
        0.05, ge=0, le=1, description="Drop slices whose fraction of foreground voxels is below this."
    )
    length: int = Field(8, ge=1, description="sequence mode: slices per item (T).")
    stride: int = Field(4, ge=1, description="sequence mode: step between the first slices of two items.")


class DeriveSettings(Section):
    outputs: list[str] = Field(
        default_factory=list,
        description="Derived paired stores (the derive registry): "
        + "; ".join(f"{m.usage} ({m.summary})" for m in derive_modes.DERIVE_MODES.values()) + ".",
    )
    drr_max_depth: float = Field(
        8.0, gt=0, description="drr: optical depth (line integral of attenuation) shown as white; the same for every subject."
    )
    lowdose_fraction: float = Field(0.25, gt=0, lt=1, description="lowdose: dose as a fraction of the original.")
    lowdose_sigma: float = Field(10.0, gt=0, description="lowdose: noise std (HU) of the full-dose scan.")

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: list[str]) -> list[str]:
        for spec in v:
            derive_modes.parse_spec(spec)  # an unknown output lists the registry
        return v

    @staticmethod
    def store_name(output: str) -> str:
        return derive_modes.store_name(output)


def split_mask_rule(text: str) -> tuple[str, str]:
    """``"suffix:_label"`` -> ``("suffix", "_label")``, ``"csv"`` -> ``("csv", "")`` (checked by `MaskSettings`)."""
    kind, _, value = str(text).partition(":")
    return kind.strip(), value


class MaskSettings(Section):
    """Label images (segmentation masks) paired with the inputs, stored on each item's exact grid.

    The rule ``source`` names one label image per input:

    * ``suffix:NEW``: same directory and extension; a stem ending ``_image`` has it replaced by NEW,
      any other stem gets NEW appended (``lung1_image.nrrd -> lung1_label.nrrd``,
      ``ct_007.nii.gz -> ct_007_label.nii.gz`` with ``suffix:_label``); ``suffix:OLD=NEW`` replaces the
      ending OLD (``case_0000.nii.gz -> case.nii.gz`` with ``suffix:_0000=``).
    * ``csv:FILE``: columns path,mask (path matched as in the subject CSV; a relative mask is relative
      to the CSV's directory); ``csv`` alone reads the ``mask`` column of ``input.subject_csv``.
    * ``pattern:TEMPLATE``: ``{stem}`` = the image file name without extension, ``{dir}`` = its
      directory; relative to the current directory; glob characters must match exactly one file.
    """

    source: str | None = Field(
        None, description="Label image per input: suffix:NEW (lung1_image.nrrd -> lung1_label.nrrd with suffix:_label; "
        "suffix:OLD=NEW replaces OLD), csv:FILE (columns path,mask) or csv (the subject CSV's mask column), or "
        "pattern:TEMPLATE with {stem} and {dir} (e.g. pattern:labels/{stem}_seg.nii.gz). Masks are resampled with "
        "nearest neighbour onto each item's exact grid and stored as int16 in the store 'masks', paired by item id."
    )
    missing: Literal["error", "skip"] = Field(
        "error", description="An input without a mask: error refuses the run before anything is written; skip leaves "
        "the input out and lists it in report.json."
    )
    min_coverage: float = Field(
        0.5, ge=0, le=1, description="Warn when less than this fraction of an image lies inside its mask's extent "
        "(the rest is labelled 0); a mask that does not overlap its image at all is always refused."
    )

    @field_validator("source")
    @classmethod
    def _rule(cls, v: str | None) -> str | None:
        if v is None:
            return v
        kind, value = split_mask_rule(v)
        if kind not in MASK_RULE_KINDS:
            raise ValueError("must start with suffix:, csv or pattern: (e.g. suffix:_label, csv:masks.csv, "
                             "pattern:labels/{stem}.nii.gz)")
        if kind == "suffix":
            old, sep, new = value.partition("=")
            if not old:
                raise ValueError("suffix: needs the mask's suffix, e.g. suffix:_label, or suffix:OLD=NEW with a non-empty OLD")
            if "/" in value or "\\" in value:
                raise ValueError("a suffix cannot hold a path separator; use pattern:TEMPLATE for masks in another directory")
        if kind == "pattern" and "{stem}" not in value:
            raise ValueError("pattern: needs {stem} (the image's file name without extension), e.g. pattern:labels/{stem}.nii.gz")
        if kind == "csv" and v.strip() != "csv" and not value.strip():
            raise ValueError("csv: needs a file name (csv:masks.csv), or write csv alone to use the subject CSV's mask column")
        return f"{kind}:{value}" if value or kind != "csv" else "csv"


class PreprocessSettings(Section):
    input: InputSettings = Field(default_factory=InputSettings, description="What to read.")
    geometry: GeometrySettings = Field(default_factory=GeometrySettings, description="Orientation, spacing and size.")
    intensity: IntensitySettings = Field(default_factory=IntensitySettings, description="Mapping of physical values to stored values.")
    mode: ModeSettings = Field(default_factory=ModeSettings, description="Volumes, slices or slice sequences.")
    derive: DeriveSettings = Field(default_factory=DeriveSettings, description="Paired stores derived from each CT.")
    masks: MaskSettings = Field(default_factory=MaskSettings, description="Label masks paired with the inputs.")
    split: SplitSettings = Field(default_factory=SplitSettings, description="Subject-level train/val/test split.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="How items are stored.")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Seed and workers.")

    @model_validator(mode="after")
    def _cross_checks(self):
        self._window_fits_modality()
        if self.store.dtype == "int16" and self.intensity.normalize != "none":
            raise ValueError("store.dtype int16 keeps raw physical values: set intensity.normalize to none")
        if self.intensity.normalize == "window" and not self.intensity.window:
            raise ValueError("intensity.normalize window needs intensity.window (e.g. lung or 40,400)")
        for spec in self.derive.outputs:  # the modes it accepts, the slicing axis kept (the derive registry)
            derive_modes.check_spec(spec, self.mode.kind, self.mode.axis)
        if self.masks.source == "csv" and not self.input.subject_csv:
            raise ValueError("masks.source csv reads the mask column of the subject CSV, but input.subject_csv is not set: "
                             "give --subject-csv, or masks.source csv:FILE with columns path,mask")
        return self

    def _window_fits_modality(self) -> None:
        """A CT window (HU) is meaningless for MR and X-ray, and ignored for OT unless asked for."""
        modality, i = self.input.modality, self.intensity
        if modality in ("MR", "XR") and (i.window or i.normalize == "window"):
            what = f"intensity.window {i.window} (--window)" if i.window else "intensity.normalize window"
            raise ValueError(f"{what} maps CT values in HU, but input.modality is {modality} (--modality {modality}): "
                             "remove the window, or use --modality CT if the images are CT")
        if modality == "OT" and i.window and i.normalize == "auto":
            raise ValueError(f"intensity.window {i.window} (--window) is not used for input.modality OT: "
                             "set intensity.normalize=window to apply it, or remove the window")

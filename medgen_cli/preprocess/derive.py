"""Derived images for paired data: DRRs from CT, simulated low-dose CT, degraded resolution.

Each function keeps the source's subject (pairs are joined by subject id) and records a short
``attrs["derived_from"]`` description.

* :func:`drr`: a digitally reconstructed radiograph by parallel projection (Beer-Lambert):
  ``mu = mu_water * (1 + HU / 1000)``, clipped at 0, integrated along the projection axis and
  shown as ``I = 1 - exp(-integral)`` so that bone is bright, as on a radiograph.
* :func:`lowdose`: image-domain noise insertion. Quantum noise variance in CT scales with
  ``1 / dose`` (e.g. Kalender, *Computed Tomography*, 3rd ed. 2011, ch. 5), so a scan at
  ``f x`` the dose has noise ``sigma0 / sqrt(f)``; adding zero-mean Gaussian noise of variance
  ``sigma0**2 * (1 - f) / f`` to a full-dose image with noise ``sigma0`` reaches it. This is the
  common simple approximation; projection-domain insertion (e.g. Yu et al., J Comput Assist
  Tomogr 2012) also reproduces the noise's dependence on attenuation and its streaks, which this
  stationary model does not.
* :func:`downsample`: anti-aliased resampling to a coarser spacing over the same field of view.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.preprocess import _resample
from medgen_cli.preprocess.intensity import is_identity, physical_unit, physical_values
from medgen_cli.preprocess.spatial import gaussian_filter, resample

log = logging.getLogger(__name__)

MU_WATER = 0.02  # linear attenuation of water, 1/mm, at a typical effective energy (~60-70 keV)
_VIEW_WORLD_AXIS = {"ap": 1, "lateral": 0}  # RAS+ world axis the rays travel along


def projection_axis(meta: ImageMeta, view: str) -> int:
    """The voxel axis closest to the view's ray direction (AP: anterior-posterior; lateral:
    left-right), read from the affine.

    Args:
        meta: metadata of a 3D image.
        view: "ap" or "lateral".
    """
    if view not in _VIEW_WORLD_AXIS:
        raise ValueError(f"view must be one of {tuple(_VIEW_WORLD_AXIS)}, got {view!r}")
    along = np.abs(meta.direction[_VIEW_WORLD_AXIS[view], :])
    axis = int(np.argmax(along))
    if along[axis] < np.cos(np.deg2rad(30)):
        log.warning("drr %s: voxel axis %d is %.0f degrees off the ray direction; the projection "
                    "follows the voxel axis", view, axis, np.rad2deg(np.arccos(along[axis])))
    return axis


def drr(
    arr_hu: np.ndarray,
    meta: ImageMeta,
    view: str = "ap",
    mu_water: float = MU_WATER,
    output: str = "log",
) -> tuple[np.ndarray, ImageMeta]:
    """Digitally reconstructed radiograph of a CT by parallel projection.

    ``output="log"`` (default) gives the line integral of attenuation (the optical depth
    ``-ln(I/I0)``), which is what a processed radiograph displays after the detector's log
    transform: bone bright, with contrast through the whole body. ``output="intensity"`` gives the
    absorbed fraction ``1 - exp(-line integral)``, which saturates through a thick body.

    The output keeps the two remaining voxel axes in their order; its affine has their columns
    and, as third column, the projection axis scaled to the whole projected depth, with the
    origin on the mid-plane of the volume (the detector plane through the volume's centre).
    Run :func:`~medgen_cli.preprocess.spatial.reorient` first for a canonical image layout.

    Args:
        arr_hu: 3D CT in HU.
        meta: its metadata.
        view: "ap" (rays anterior-posterior) or "lateral" (rays left-right).
        mu_water: attenuation of water in 1/mm (larger saturates soft tissue sooner).
        output: "log" (line integral, unbounded, >= 0) or "intensity" (in [0, 1]).

    Returns:
        ``(image, meta)``, modality "XR"; the mapping is the identity in the output's unit.
    """
    if arr_hu.ndim != 3:
        raise ValueError(f"drr needs a 3D CT, got shape {arr_hu.shape}")
    if output not in ("log", "intensity"):
        raise ValueError(f"output must be 'log' or 'intensity', got {output!r}")
    if not (np.isfinite(mu_water) and mu_water > 0):
        raise ValueError(f"mu_water must be > 0 (1/mm), got {mu_water!r}")
    axis = projection_axis(meta, view)
    hu = physical_values(arr_hu, meta)
    mu = np.clip(mu_water * (1.0 + hu.astype(np.float64) / 1000.0), 0.0, None)
    line = mu.sum(axis=axis) * meta.spacing[axis]
    if output == "log":
        image = line.astype(np.float32)
    else:
        image = (-np.expm1(-line)).astype(np.float32)  # 1 - exp(-line), accurate for small integrals

    n = arr_hu.shape[axis]
    keep = [a for a in range(3) if a != axis]
    centre = np.zeros(4)
    centre[axis], centre[3] = (n - 1) / 2, 1.0
    affine = np.eye(4)
    affine[:, 0], affine[:, 1] = meta.affine[:, keep[0]], meta.affine[:, keep[1]]
    affine[:3, 2] = meta.affine[:3, axis] * n
    affine[:, 3] = meta.affine @ centre
    if output == "log":
        high = max(float(image.max()), 1e-6)
        mapping = IntensityMapping(method="identity", unit="optical depth", in_low=0.0, in_high=high,
                                   out_low=0.0, out_high=high, clip=False)
    else:
        mapping = IntensityMapping(method="identity", unit="1-exp(-line integral)", in_low=0.0, in_high=1.0,
                                   out_low=0.0, out_high=1.0, clip=True)
    attrs = {"view": view, "derived_from": f"DRR {view} (parallel, mu_water={mu_water:g}/mm) of {meta.modality}"}
    return image, meta.replace(affine=affine, modality="XR", intensity=mapping, attrs=attrs)


def lowdose(
    arr_hu: np.ndarray,
    meta: ImageMeta,
    dose_fraction: float = 0.25,
    seed: int = 0,
    sigma_full: float = 10.0,
    correlation_mm: float = 0.0,
) -> tuple[np.ndarray, ImageMeta]:
    """Simulate a CT at ``dose_fraction`` of the dose by adding Gaussian noise (module docstring).

    The added noise has std ``sigma = sigma_full * sqrt((1 - f) / f)`` HU. With
    ``correlation_mm > 0`` white noise is first smoothed by a Gaussian of that std (mm, per-axis
    voxel sigma from the spacing) and rescaled by the kernel's L2 norm, so its std is still
    ``sigma`` (exactly in the interior) but its texture is blotchy like reconstructed CT noise.

    Args:
        arr_hu: CT in HU (2D or 3D).
        meta: its metadata.
        dose_fraction: ``f`` in (0, 1]; 1 adds no noise.
        seed: seed of the noise.
        sigma_full: noise std of the full-dose input, HU.
        correlation_mm: std of the noise-correlation Gaussian in mm (0 = white noise).
    """
    f = float(dose_fraction)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction!r}")
    if not (np.isfinite(sigma_full) and sigma_full >= 0):
        raise ValueError(f"sigma_full must be >= 0 HU, got {sigma_full!r}")
    if not (np.isfinite(correlation_mm) and correlation_mm >= 0):
        raise ValueError(f"correlation_mm must be >= 0, got {correlation_mm!r}")
    sigma = float(sigma_full) * np.sqrt((1.0 - f) / f)
    hu = physical_values(arr_hu, meta)
    noise = np.random.default_rng(seed).standard_normal(hu.shape, dtype=np.float32)
    if correlation_mm > 0:
        sig_vox = [correlation_mm / s for s in meta.spacing[: hu.ndim]]
        norm = float(np.prod([np.sqrt(np.sum(_resample.gaussian_kernel(s) ** 2)) for s in sig_vox]))
        noise = gaussian_filter(noise, sig_vox) / np.float32(norm)
    out = (hu + np.float32(sigma) * noise).astype(np.float32)
    changes = {}
    if not is_identity(meta.intensity):  # input was stored through a mapping; output is physical
        changes["intensity"] = IntensityMapping(unit=physical_unit(meta), in_low=0.0, in_high=1.0)
    attrs = {
        "derived_from": f"low dose f={f:g} (+{sigma:.3g} HU noise, correlation {correlation_mm:g} mm)",
        "dose_fraction": f,
        "noise_sigma": sigma,
    }
    return out, meta.replace(attrs=attrs, **changes)


def downsample(
    arr: np.ndarray,
    meta: ImageMeta,
    factor: float | Sequence[float],
    axes: str = "all",
    order: str = "linear",
    antialias: bool = True,
    backend: str = "auto",
) -> tuple[np.ndarray, ImageMeta]:
    """Degrade resolution: resample to ``factor x`` the spacing over the same field of view.

    Args:
        arr: 2D or 3D array.
        meta: its metadata.
        factor: one factor >= 1, or one per array axis.
        axes: with a single factor: "all" axes, or "inplane" (the first two, i and j; the slice
            axis k keeps its spacing).
        order, antialias, backend: as in :func:`~medgen_cli.preprocess.spatial.resample`.
    """
    if axes not in ("all", "inplane"):
        raise ValueError(f"axes must be 'all' or 'inplane', got {axes!r}")
    if np.isscalar(factor):
        factors = [float(factor)] * arr.ndim
        if axes == "inplane":
            factors = [float(factor) if a < 2 else 1.0 for a in range(arr.ndim)]
    else:
        factors = [float(v) for v in factor]
    if len(factors) != arr.ndim or any(not np.isfinite(v) or v < 1 for v in factors):
        raise ValueError(f"factor must be >= 1, one value or one per axis of a {arr.ndim}D array, got {factor!r}")
    spacing = [s * v if v != 1 else None for s, v in zip(meta.spacing[: arr.ndim], factors)]
    out, m = resample(arr, meta, spacing, order=order, antialias=antialias, backend=backend)
    label = "x".join(f"{v:g}" for v in factors)
    return out, m.replace(attrs={"derived_from": f"downsample {label} ({order}, antialias={antialias})"})

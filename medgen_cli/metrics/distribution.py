"""Distances between sets of images: Fréchet distance, MMD, intensity distance, diversity, memorisation.

* :func:`frechet_distance`: the Fréchet (2-Wasserstein) distance between Gaussians fitted to two
  feature sets (Heusel et al. 2017, "FID"), here on features of the trained autoencoder's encoder.
* :func:`mmd_rbf`: the unbiased squared maximum mean discrepancy with an RBF kernel and the
  median-heuristic bandwidth (Gretton et al. 2012).
* :func:`intensity_distance`: 1-Wasserstein distance between the value distributions of two image
  sets in physical units (HU for CT): how far, in HU, the histograms are apart.
* :func:`diversity`: mean pairwise MS-SSIM among samples (lower = more diverse).
* :func:`memorisation_check`: for each sample the most similar training item by SSIM, flagged
  when the similarity exceeds a threshold, because a synthetic image must not reproduce a patient.

Features are ``(N, D)`` arrays or tensors; images are ``(N, C, *spatial)``. Computation is float64
on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..meta import ImageMeta, IntensityMapping
from .image import ms_ssim

log = logging.getLogger(__name__)


def _features(x, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"{name} must be (N, D) features with N >= 2, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values")
    return t


def _pair_features(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    fa, fb = _features(a, "features_a"), _features(b, "features_b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature dimensions differ: {fa.shape[1]} and {fb.shape[1]}")
    return fa, fb


def _images(x, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if t.ndim not in (4, 5):
        raise ValueError(f"{name} must be (N, C, *spatial) with 2 or 3 spatial axes, got shape {tuple(t.shape)}")
    return t


def _sym_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between two feature sets.

    The trace of ``(S_a S_b)^(1/2)`` is computed as the sum of the square roots of the eigenvalues
    of the symmetric PSD matrix ``S_a^(1/2) S_b S_a^(1/2)`` (same eigenvalues as ``S_a S_b``), which
    avoids the complex round-off of a general matrix square root. Covariances use ``N - 1``.

    Args:
        features_a, features_b: (N, D) and (M, D) features, N, M >= 2.
    """
    fa, fb = _pair_features(features_a, features_b)
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    cov_a, cov_b = torch.cov(fa.T).reshape(fa.shape[1], -1), torch.cov(fb.T).reshape(fb.shape[1], -1)
    root_a = _sym_sqrt(cov_a)
    cross = root_a @ cov_b @ root_a
    tr_cross = torch.linalg.eigvalsh((cross + cross.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * tr_cross
    return max(float(value), 0.0)


def mmd_rbf(features_a, features_b, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with the kernel ``exp(-|x - y|^2 / (2 sigma^2))``.

    Args:
        features_a, features_b: (N, D) and (M, D) features, N, M >= 2.
        bandwidth: ``sigma``; default: the median pairwise distance of the pooled features.

    Returns:
        The estimate; about 0 (and possibly slightly negative) for sets from one distribution.
    """
    fa, fb = _pair_features(features_a, features_b)
    n, m = fa.shape[0], fb.shape[0]
    pooled = torch.cat([fa, fb])
    d2 = torch.cdist(pooled, pooled).square()
    if bandwidth is None:
        off = d2[~torch.eye(n + m, dtype=torch.bool)]
        sigma = float(off.sqrt().median())
        if sigma <= 0:
            sigma = 1.0  # every pair coincides; any bandwidth gives MMD 0
    else:
        sigma = float(bandwidth)
        if not sigma > 0 or not np.isfinite(sigma):
            raise ValueError(f"bandwidth must be a positive number, got {bandwidth!r}")
    k = torch.exp(-d2 / (2 * sigma**2))
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    term_a = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    term_b = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(term_a + term_b - 2 * kab.mean())


def _values(images, name: str) -> np.ndarray:
    items = images if isinstance(images, (list, tuple)) else [images]
    flat = [(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).reshape(-1) for x in items]
    values = np.concatenate(flat).astype(np.float64) if flat else np.zeros(0)
    if values.size == 0:
        raise ValueError(f"{name} holds no values")
    return values


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """Exact 1-Wasserstein distance between two empirical 1D distributions: ``∫ |F_u - F_v|``."""
    u, v = np.sort(np.asarray(u, np.float64).ravel()), np.sort(np.asarray(v, np.float64).ravel())
    if u.size == 0 or v.size == 0:
        raise ValueError(f"both value sets must be non-empty, got sizes {u.size} and {v.size}")
    grid = np.sort(np.concatenate([u, v]))
    cdf_u = np.searchsorted(u, grid[:-1], side="right") / u.size
    cdf_v = np.searchsorted(v, grid[:-1], side="right") / v.size
    return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(grid)))


def intensity_distance(samples, reals, mapping: IntensityMapping | ImageMeta,
                       max_values: int = 1_000_000, seed: int = 0) -> float:
    """1-Wasserstein distance between the value distributions of two image sets, in physical units.

    Args:
        samples, reals: stored-value images (an array/tensor of any shape, or a list of them).
        mapping: the stored intensity mapping (or the ``ImageMeta`` holding it).
        max_values: each set is randomly subsampled (seeded) to at most this many values.
        seed: seed of the subsampling.

    Returns:
        The distance in ``mapping.unit`` (HU for CT): the mean shift needed to turn one histogram
        into the other.
    """
    mapping = mapping.intensity if isinstance(mapping, ImageMeta) else mapping
    if not isinstance(mapping, IntensityMapping):
        raise ValueError(f"expected an IntensityMapping or ImageMeta, got {type(mapping).__name__}")
    if not isinstance(max_values, int) or max_values < 1:
        raise ValueError(f"max_values must be a positive integer, got {max_values!r}")
    rng = np.random.default_rng(seed)
    sets = []
    for name, images in (("samples", samples), ("reals", reals)):
        v = _values(images, name)
        if v.size > max_values:
            v = rng.choice(v, size=max_values, replace=False)
        sets.append(np.asarray(mapping.to_physical(v), dtype=np.float64))
    return wasserstein_1d(*sets)


def _pairwise_ms_ssim(a: torch.Tensor, b: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, data_range: float,
                      window_size: int, max_scales: int, batch_size: int) -> torch.Tensor:
    """MS-SSIM of the pairs ``(a[ia[p]], b[ib[p]])``, gathered batch by batch to bound the memory."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    out = [ms_ssim(a[ia[p:p + batch_size]], b[ib[p:p + batch_size]], data_range, window_size, max_scales)
           for p in range(0, ia.numel(), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def diversity(samples, data_range: float, window_size: int = 11, max_pairs: int = 2000,
              batch_size: int = 16, seed: int = 0) -> float:
    """Mean pairwise MS-SSIM among samples (1 = all identical; lower = more diverse).

    Args:
        samples: (N, C, *spatial) images, N >= 2.
        data_range: ``L`` of the SSIM constants.
        window_size: Gaussian taps per axis.
        max_pairs: when N(N-1)/2 exceeds this, a seeded random subset of pairs is used.
        batch_size: pairs evaluated at once.
        seed: seed of the pair subset.
    """
    x = _images(samples, "samples")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {n}")
    i, j = torch.triu_indices(n, n, offset=1)
    if i.numel() > max_pairs:
        keep = torch.randperm(i.numel(), generator=torch.Generator().manual_seed(seed))[:max_pairs]
        i, j = i[keep], j[keep]
    return float(_pairwise_ms_ssim(x, x, i, j, data_range, window_size, 5, batch_size).mean())


@dataclass(frozen=True)
class MemorisationResult:
    """Outcome of :func:`memorisation_check`, one entry per sample.

    Args:
        nearest: (N,) index of the most similar training item.
        similarity: (N,) its SSIM to the sample.
        flagged: (N,) similarity > threshold.
        threshold: the threshold used.
    """

    nearest: np.ndarray
    similarity: np.ndarray
    flagged: np.ndarray
    threshold: float

    def records(self) -> list[dict]:
        """One JSON-ready dict per sample."""
        return [{"sample": k, "nearest_train": int(n), "ssim": float(s), "flagged": bool(f)}
                for k, (n, s, f) in enumerate(zip(self.nearest, self.similarity, self.flagged))]


def _thumbnails(x: torch.Tensor, size: int) -> torch.Tensor:
    target = tuple(min(size, n) for n in x.shape[2:])
    pool = F.adaptive_avg_pool2d if x.ndim == 4 else F.adaptive_avg_pool3d
    return pool(x, target).flatten(1)


def memorisation_check(samples, training, data_range: float, threshold: float = 0.8,
                       max_candidates: int = 16, thumbnail: int = 16, window_size: int = 11,
                       batch_size: int = 16) -> MemorisationResult:
    """For every sample, the most similar training item by SSIM and a flag above ``threshold``.

    Similarity is single-scale SSIM (``ms_ssim`` with one scale, so the window adapts to thin
    axes; negative values count as 0). With more than ``max_candidates`` training items, each
    sample is first compared by L2 distance on average-pooled thumbnails (at most ``thumbnail``
    voxels per axis) and SSIM is computed only against its ``max_candidates`` nearest items.

    Args:
        samples: (N, C, *spatial) generated images (stored values).
        training: (M, C, *spatial) training images of the same shape.
        data_range: ``L`` of the SSIM constants.
        threshold: SSIM above which a sample is flagged as a possible copy. On brain MR slices,
            another subject at the same level scores about 0.35-0.45, a neighbouring slice of the
            same subject about 0.7, and a training slice with 1% / 2% added noise 0.96 / 0.85 (SSIM
            is noise-sensitive). To calibrate for a data set, run the check for held-out real
            items against the training set: their nearest-item SSIM is what an unseen image scores.
        max_candidates: training items per sample that get a full SSIM.
        thumbnail: thumbnail size per axis of the pre-screen.
        window_size: Gaussian taps per axis.
        batch_size: pairs evaluated at once.
    """
    s, t = _images(samples, "samples"), _images(training, "training")
    if s.shape[1:] != t.shape[1:]:
        raise ValueError(f"samples and training items differ in shape: {tuple(s.shape[1:])} and {tuple(t.shape[1:])}")
    if s.shape[0] == 0 or t.shape[0] == 0:
        raise ValueError(f"need at least one sample and one training item, got {s.shape[0]} and {t.shape[0]}")
    if not isinstance(max_candidates, int) or max_candidates < 1:
        raise ValueError(f"max_candidates must be a positive integer, got {max_candidates!r}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be an SSIM in [-1, 1], got {threshold!r}")
    n, m = s.shape[0], t.shape[0]
    if m > max_candidates:
        dist = torch.cdist(_thumbnails(s, thumbnail), _thumbnails(t, thumbnail))  # (N, M)
        candidates = dist.topk(max_candidates, dim=1, largest=False).indices
        log.debug("memorisation: pre-screened %d training items to %d per sample", m, max_candidates)
    else:
        candidates = torch.arange(m).expand(n, m)
    k = candidates.shape[1]
    rows = torch.arange(n).repeat_interleave(k)
    cols = candidates.reshape(-1)
    sim = _pairwise_ms_ssim(s, t, rows, cols, data_range, window_size, 1, batch_size).view(n, k)
    best = sim.argmax(1)
    nearest = candidates.gather(1, best[:, None])[:, 0]
    similarity = sim.gather(1, best[:, None])[:, 0]
    return MemorisationResult(nearest=nearest.numpy(), similarity=similarity.numpy(),
                              flagged=(similarity > threshold).numpy(), threshold=float(threshold))

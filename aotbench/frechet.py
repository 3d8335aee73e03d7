"""Frechet distance between Gaussian fits of two feature sets (the quantity behind FID and the domain FD)."""

from __future__ import annotations

import numpy as np
import torch


def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], covariance [F, F]) in float64, covariance with the unbiased 1/(n-1) normalization like FID."""
    f = feats.double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).

    Tr((S1 S2)^{1/2}) is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    S1^{1/2} S2 S1^{1/2} (same spectrum), which avoids the complex round-off of a general matrix square root.
    """
    mu1, mu2, s1, s2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, s1, s2))
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_cross)


def frechet_from_features(f1, f2) -> float:
    """FD between the Gaussian fits of two feature sets [N1, F] and [N2, F] (tensors or arrays): :func:`gaussian_stats`
    of each, then :func:`frechet_distance` (FID when the features are Inception's; Heusel et al. 2017)."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))

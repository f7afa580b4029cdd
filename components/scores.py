"""Evaluation metrics: Fréchet distance, precision and recall, classifier score, PSNR/SSIM helpers."""
from __future__ import annotations

import warnings

import numpy as np


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 (Sa Sb)^1/2) between two feature sets (rows)."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a singular product is handled below
        covmean = linalg.sqrtm(sa @ sb)
    if not np.isfinite(covmean).all():  # near-singular: regularize, as the FID reference code does
        eps = np.eye(sa.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    covmean = covmean.real
    return float(max(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean), 0.0))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(x: np.ndarray, k: int = 3, batch: int = 1000) -> np.ndarray:
    """Per row of x, the squared distance to its k-th nearest other row: the radius of the ball
    that row adds to the set's manifold estimate."""
    x = np.asarray(x, np.float64)
    if len(x) <= k:
        raise ValueError(f"{k}-nearest-neighbour radii need more than {k} rows, got {len(x)}")
    # column 0 after partitioning is the row itself (distance 0); column k its k-th neighbour
    return np.concatenate([np.partition(_squared_distances(x[i:i + batch], x), k, axis=1)[:, k]
                           for i in range(0, len(x), batch)])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, batch: int = 1000) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019 ("Improved Precision and Recall Metric for Assessing Generative
    Models"): each set's manifold is the union of balls around its rows, each as wide as the
    distance to the row's k-th nearest neighbour in the set. Precision: the share of fake rows
    inside the real manifold (fidelity); recall: the share of real rows inside the fake one
    (coverage: a collapsed generator has a tiny manifold)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    r_real, r_fake = knn_radii(real, k, batch), knn_radii(fake, k, batch)
    inside_real = np.zeros(len(fake), bool)
    covered = np.zeros(len(real), bool)
    for i in range(0, len(fake), batch):
        d = _squared_distances(fake[i:i + batch], real)  # fake rows x real rows
        inside_real[i:i + batch] = (d <= r_real[None, :]).any(1)
        covered |= (d <= r_fake[i:i + batch, None]).any(0)
    return float(inside_real.mean()), float(covered.mean())


def classifier_score(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): the Inception score, computed with our own classifier."""
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    py = p.mean(0, keepdims=True)
    kl = (p * (np.log(p + 1e-12) - np.log(py + 1e-12))).sum(1)
    return float(np.exp(kl.mean()))


def lattice_energy(images: np.ndarray) -> float:
    """The share of an image's spectral power (its mean removed) at the frequencies of a 2- and
    4-pixel period, along either axis or both: the regular lattice a stride-2 transposed
    convolution stamps over what it draws (the checkerboard of Odena et al. 2016, "Deconvolution
    and Checkerboard Artifacts"). The mean over images; compare it with real images' value."""
    x = np.asarray(images, np.float64)
    x = x.mean(-1) if x.ndim == 4 else x  # (n, h, w[, c]) -> (n, h, w)
    h, w = x.shape[1:]
    power = np.abs(np.fft.fft2(x - x.mean(axis=(1, 2), keepdims=True))) ** 2
    rows, cols = ({round(n * k / 4) % n for k in range(4)} for n in (h, w))  # periods 4, 2, 4
    lattice = np.zeros((h, w), bool)
    lattice[np.ix_(sorted(rows), sorted(cols))] = True
    lattice[0, 0] = False
    total = power.sum(axis=(1, 2))
    return float(np.mean(power[:, lattice].sum(1) / np.maximum(total, 1e-12)))


def image_scores(pred: np.ndarray, target: np.ndarray) -> dict:
    """L1 in the [-1, 1] range the models work in; PSNR and SSIM (tf.image, per image, then the
    mean) after mapping both to [0, 1]."""
    import tensorflow as tf

    a, b = (np.asarray(pred, np.float32) + 1) / 2, (np.asarray(target, np.float32) + 1) / 2
    return {"l1": float(np.abs(np.asarray(pred, np.float64) - target).mean()),
            "psnr": float(tf.reduce_mean(tf.image.psnr(a, b, max_val=1.0))),
            "ssim": float(tf.reduce_mean(tf.image.ssim(a, b, max_val=1.0)))}

"""Evaluation metrics: Fréchet distance, classifier score, PSNR/SSIM helpers, blessing rules."""
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


def classifier_score(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): the Inception score, computed with our own classifier."""
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    py = p.mean(0, keepdims=True)
    kl = (p * (np.log(p + 1e-12) - np.log(py + 1e-12))).sum(1)
    return float(np.exp(kl.mean()))


def image_scores(pred: np.ndarray, target: np.ndarray) -> dict:
    """L1 in the [-1, 1] range the models work in; PSNR and SSIM (tf.image, per image, then the
    mean) after mapping both to [0, 1]."""
    import tensorflow as tf

    a, b = (np.asarray(pred, np.float32) + 1) / 2, (np.asarray(target, np.float32) + 1) / 2
    return {"l1": float(np.abs(np.asarray(pred, np.float64) - target).mean()),
            "psnr": float(tf.reduce_mean(tf.image.psnr(a, b, max_val=1.0))),
            "ssim": float(tf.reduce_mean(tf.image.ssim(a, b, max_val=1.0)))}


def bless(key: str, higher: bool, metrics: dict, champion: dict | None,
          tolerance: float) -> tuple[bool, str]:
    """Whether metrics[key] is no worse than the champion's (within tolerance), and why."""
    value = metrics[key]
    if not np.isfinite(value):
        return False, f"{key} is not finite"
    if champion is None:
        return True, f"no champion yet; {key}={value:.4g}"
    best = champion["metrics"].get(key)
    if best is None:
        return True, f"champion has no {key}"
    ok = value >= best - tolerance if higher else value <= best + tolerance
    word = "not lower" if higher else "not higher"
    return ok, (f"{key}={value:.4g} vs champion {best:.4g} (tolerance {tolerance}): "
                + (f"{word}, blessed" if ok else "worse, not blessed"))

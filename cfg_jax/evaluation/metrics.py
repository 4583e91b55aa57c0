"""Sample-quality metrics on feature vectors: FID, Inception Score, precision and recall.

Pure numpy/scipy, independent of the network that made the features:
  FID        Heusel et al. 2017: the Fréchet distance between Gaussians fitted to the
             features of real and generated data (`feature_statistics`, `frechet_distance`).
  IS         Salimans et al. 2016: exp E_x KL(p(y | x) ‖ p(y)), averaged over splits.
  P&R        Kynkäänniemi et al. 2019: the real (fake) manifold is the union of balls
             around each real (fake) feature with radius the distance to its k-th nearest
             neighbour; precision is the fraction of fake features inside the real
             manifold, recall the fraction of real features inside the fake one.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy import special


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D]) of features [N, D], in float64, N >= 2."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"features must be [N, D] with N >= 2, got shape {features.shape}.")
  return features.mean(axis=0), np.cov(features, rowvar=False).reshape(
      features.shape[1], features.shape[1])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, *, eps: float = 1e-6) -> float:
  """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), as pytorch-fid computes it.

  A singular product (fewer samples than dimensions) gets eps·I added to both
  covariances; the imaginary part that sqrtm leaves from round-off is dropped when it
  is small, and refused when it is not.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma "
                     f"{sigma1.shape} vs {sigma2.shape}.")
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(len(mu1)) * eps
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm(Σ1 Σ2) has an imaginary component of "
                       f"{np.max(np.abs(covmean.imag)):.3g}; are the features finite?")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits: np.ndarray | None = None, *, probs: np.ndarray | None = None,
                    splits: int = 10) -> tuple[float, float]:
  """(mean, std) over `splits` equal parts of exp(E_x KL(p(y | x) ‖ p(y))).

  Give `logits` [N, K] (softmax is taken) or `probs` [N, K] (rows summing to 1). p(y)
  is the mean of p(y | x) within each split, as in Salimans et al.; the last N mod
  splits examples are dropped so the splits are equal.
  """
  if (logits is None) == (probs is None):
    raise ValueError("Give exactly one of logits or probs.")
  if logits is not None:
    log_p = special.log_softmax(np.asarray(logits, np.float64), axis=-1)
    p = np.exp(log_p)
  else:
    p = np.asarray(probs, np.float64)
    if p.ndim == 2 and (np.any(p < 0) or not np.allclose(p.sum(-1), 1, atol=1e-4)):
      raise ValueError("probs must be non-negative rows summing to 1.")
  if p.ndim != 2 or len(p) < 1:
    raise ValueError(f"logits/probs must be [N, K] with N >= 1, got shape {p.shape}.")
  if not 1 <= splits <= len(p):
    raise ValueError(f"splits must lie in [1, N={len(p)}], got {splits}.")
  size = len(p) // splits
  scores = []
  for part in np.split(p[:size * splits], splits):
    p_y = part.mean(axis=0, keepdims=True)
    kl = np.sum(special.xlogy(part, part) - special.xlogy(part, p_y), axis=-1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """‖a_i − b_j‖² [len(a), len(b)], clipped at 0 against round-off."""
  d = (np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2 * a @ b.T)
  return np.maximum(d, 0.)


def knn_radii(features: np.ndarray, *, k: int, batch_size: int = 1024) -> np.ndarray:
  """Squared distance of each feature to its k-th nearest other feature, [N]."""
  features = np.asarray(features, np.float64)
  if not 1 <= k < len(features):
    raise ValueError(f"k must lie in [1, N - 1] = [1, {len(features) - 1}], got {k}.")
  radii = []
  for start in range(0, len(features), batch_size):
    d = _squared_distances(features[start:start + batch_size], features)
    radii.append(np.partition(d, k, axis=1)[:, k])  # index 0 is the point itself
  return np.concatenate(radii)


def _coverage(query: np.ndarray, reference: np.ndarray, radii: np.ndarray,
              batch_size: int) -> float:
  """Fraction of query features inside some ball (reference_j, radii_j)."""
  inside = [np.any(_squared_distances(query[start:start + batch_size], reference) <= radii,
                   axis=1) for start in range(0, len(query), batch_size)]
  return float(np.mean(np.concatenate(inside)))


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray, *, k: int = 3,
                     batch_size: int = 1024) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019) of fake against real features.

  Distances are computed `batch_size` rows at a time, so memory is
  O(batch_size · max(N_real, N_fake)) rather than quadratic.
  """
  real = np.asarray(real_features, np.float64)
  fake = np.asarray(fake_features, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"real and fake features must be [N, D] with one D, got {real.shape} "
                     f"and {fake.shape}.")
  precision = _coverage(fake, real, knn_radii(real, k=k, batch_size=batch_size), batch_size)
  recall = _coverage(real, fake, knn_radii(fake, k=k, batch_size=batch_size), batch_size)
  return precision, recall

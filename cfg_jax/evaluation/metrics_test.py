"""Tests of FID, Inception Score and precision/recall on features with known answers."""
import numpy as np
import pytest

from cfg_jax.evaluation import metrics


def _fid(a, b):
  return metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b))


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
  x = np.random.default_rng(0).normal(size=(500, 8))
  assert abs(_fid(x, x)) < 1e-6
  fids = [_fid(x, x + shift) for shift in (0.5, 1., 2.)]
  # A shift s of every coordinate moves the mean by s·√8 and leaves the covariance.
  np.testing.assert_allclose(fids, [8 * 0.25, 8 * 1., 8 * 4.], rtol=1e-6)


def test_fid_of_gaussians_matches_the_closed_form():
  # Diagonal covariances commute: tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) = Σ (s1 − s2)².
  s1, s2 = np.array([1., 4., 9.]), np.array([4., 4., 1.])
  mu1, mu2 = np.zeros(3), np.array([1., 0., 0.])
  fid = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  np.testing.assert_allclose(fid, 1. + np.sum((np.sqrt(s1) - np.sqrt(s2))**2), rtol=1e-8)


def test_fid_with_fewer_samples_than_dimensions_is_finite():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
  assert np.isfinite(_fid(a, b)) and _fid(a, b) > 0


def test_fid_rejects_mismatched_statistics():
  with pytest.raises(ValueError, match="mismatched statistics"):
    metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_inception_score_of_one_hot_predictions_is_the_class_count():
  labels = np.arange(40) % 4
  one_hot = np.eye(4)[labels]
  assert metrics.inception_score(probs=one_hot, splits=1) == pytest.approx((4., 0.))
  assert metrics.inception_score(probs=one_hot, splits=10)[0] == pytest.approx(4.)
  assert metrics.inception_score(logits=50. * one_hot, splits=1)[0] == pytest.approx(4., rel=1e-6)
  # One class: every prediction equals the marginal, KL = 0.
  assert metrics.inception_score(probs=np.eye(4)[np.zeros(40, int)], splits=1)[0] == 1.
  # Uniform predictions carry no information either.
  assert metrics.inception_score(logits=np.zeros((40, 4)), splits=2)[0] == pytest.approx(1.)


def test_inception_score_errors():
  with pytest.raises(ValueError, match="exactly one of logits or probs"):
    metrics.inception_score()
  with pytest.raises(ValueError, match=r"splits must lie in \[1, N=4\]"):
    metrics.inception_score(logits=np.zeros((4, 3)), splits=5)
  with pytest.raises(ValueError, match="rows summing to 1"):
    metrics.inception_score(probs=np.full((4, 3), 0.5))


def test_precision_recall_of_identical_sets_is_one():
  x = np.random.default_rng(2).normal(size=(300, 5))
  assert metrics.precision_recall(x, x, k=3, batch_size=64) == (1., 1.)


def test_precision_drops_for_a_far_away_fake_set_and_recall_for_a_collapsed_one():
  rng = np.random.default_rng(3)
  real = rng.normal(size=(400, 4))
  far = rng.normal(size=(400, 4)) + 100.
  precision, recall = metrics.precision_recall(real, far, k=3)
  assert precision == 0. and recall == 0.
  # Mode collapse: fakes are real-looking (precision high) but cover little (recall low).
  collapsed = real[0] + 1e-3 * rng.normal(size=(20, 4))
  precision, recall = metrics.precision_recall(real, collapsed, k=3)
  assert precision == 1. and recall < 0.05


def test_precision_recall_batching_does_not_change_the_result():
  rng = np.random.default_rng(4)
  real, fake = rng.normal(size=(200, 3)), rng.normal(size=(150, 3)) + 0.5
  assert (metrics.precision_recall(real, fake, k=5, batch_size=7)
          == metrics.precision_recall(real, fake, k=5, batch_size=10_000))


def test_knn_radii_is_the_kth_neighbour_distance():
  x = np.array([[0.], [1.], [3.], [6.]])
  np.testing.assert_allclose(metrics.knn_radii(x, k=1), [1., 1., 4., 9.])
  np.testing.assert_allclose(metrics.knn_radii(x, k=2), [9., 4., 9., 25.])
  with pytest.raises(ValueError, match=r"k must lie in \[1, N - 1\] = \[1, 3\]"):
    metrics.knn_radii(x, k=4)

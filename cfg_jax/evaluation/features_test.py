"""Tests of the feature nets' shared parts: the toy2d points net."""
import numpy as np

from cfg_jax import data_sources
from cfg_jax import test_configs
from cfg_jax.evaluation import features


def test_points_net_is_the_bayes_classifier_of_toy2d():
  config = test_configs.with_data(source="toy2d", num_classes=4)
  net = features.points_net(config)
  means = np.asarray(data_sources.toy2d_mixture(config).means, np.float32)
  point_features, logits = features.compute_features(net, means, batch_size=4)
  np.testing.assert_array_equal(point_features, means)
  np.testing.assert_array_equal(np.argmax(logits, -1), np.arange(4))

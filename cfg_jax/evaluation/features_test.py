"""Tests of the feature nets' shared parts: the toy2d points net."""
import numpy as np

from cfg_jax import config_lib
from cfg_jax import input_pipeline
from cfg_jax.evaluation import features


def test_points_net_is_the_bayes_classifier_of_toy2d():
  config = config_lib.base_config()
  config.data.update(source="toy2d", num_classes=4)
  net = features.points_net(config)
  means = np.asarray(input_pipeline.toy2d_mixture(config).means, np.float32)
  point_features, logits = features.compute_features(net, means, batch_size=4)
  np.testing.assert_array_equal(point_features, means)
  np.testing.assert_array_equal(np.argmax(logits, -1), np.arange(4))

"""Tests of the evaluation classifier: trained once on the run's data, then cached."""
import numpy as np

from cfg_jax import input_pipeline
from cfg_jax import test_configs
from cfg_jax.evaluation import eval_classifier
from cfg_jax.evaluation import features
from cfg_jax.evaluation import real_data


def test_eval_classifier_trains_once_and_is_cached(tmp_path, monkeypatch):
  run_config = test_configs.with_data(image_size=16)
  config = test_configs.tiny_eval_classifier(num_steps=40, learning_rate=3e-3, holdout=200)
  net = eval_classifier.eval_classifier_net(config, run_config, cache_root=tmp_path)
  accuracy = net.info["eval_classifier_held_out_accuracy"]
  assert accuracy > 0.5  # 10 classes: chance is 0.1
  dataset = input_pipeline.create_dataset(run_config)
  x, labels = real_data.read_examples(dataset, 50)
  image_features, logits = features.compute_features(net, x, batch_size=32)
  assert image_features.shape == (50, 16) and logits.shape == (50, 10) and net.logits_are_labels

  def no_training(*args):
    raise AssertionError("the cached eval classifier should have been restored")

  monkeypatch.setattr(eval_classifier, "train_eval_classifier", no_training)
  restored = eval_classifier.eval_classifier_net(config, run_config, cache_root=tmp_path)
  assert restored.fingerprint == net.fingerprint
  np.testing.assert_allclose(features.compute_features(restored, x, batch_size=32)[1], logits,
                             rtol=1e-5, atol=1e-5)
  # Another data source (or config) gets its own cache entry.
  fashion = run_config.copy_and_resolve_references()
  fashion.data.source = "fashion_mnist"
  assert (eval_classifier.eval_classifier_dir(tmp_path, config, run_config)
          != eval_classifier.eval_classifier_dir(tmp_path, config, fashion))

"""Tests of `evaluate` on an image run: the eval classifier and statistics caches, errors."""
import jax
import numpy as np
import pytest

from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import evaluation
from cfg_jax import models
from cfg_jax import test_configs
from cfg_jax.evaluation import eval_classifier
from cfg_jax.evaluation import real_data
from cfg_jax.evaluation import sweep


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
  """An untrained MNIST run with random weights: compiling the UNet's train step (or even its
  init) takes tens of seconds on CPU.

  Its checkpoint holds only what `runs.load_run` restores, the EMA parameters.
  """
  workdir = tmp_path_factory.mktemp("image_run")
  config = test_configs.tiny_image_run()
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0., 0.1, s.shape).astype(s.dtype),
                        models.param_shapes(models.create_model(config), config))
  config_files.save_config(workdir, config)
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=1)
  checkpointer.save(1, {"ema_params": params}, {"signature": checkpointing.signature(config)})
  checkpointer.wait()
  checkpointer.close()
  return workdir


def test_image_run_trains_the_eval_classifier_once_and_caches_statistics(image_run, tmp_path,
                                                                        monkeypatch):
  config = test_configs.tiny_eval_classifier(num_steps=30, holdout=100)
  rows = evaluation.evaluate(image_run, ws=[0., 1.], num_samples=20,
                             spec_overrides={"num_steps": 2}, out=tmp_path,
                             eval_classifier_config=config, num_real=200, is_splits=2,
                             batch_size=20, feature_batch_size=32)
  assert [(r["w"], r["classifier_scale"]) for r in rows] == [(0., None), (1., None)]
  assert all(0 <= r["accuracy"] <= 1 and np.isfinite(r["fid"]) for r in rows)
  assert "Eval classifier" in (tmp_path / "metrics.md").read_text()
  (entry,) = (image_run / "eval_classifier").iterdir()
  assert (entry / "info.json").exists() and (entry / "params.msgpack").exists()

  def fail(*args, **kwargs):
    raise AssertionError("should have come from the cache")

  monkeypatch.setattr(eval_classifier, "train_eval_classifier", fail)
  monkeypatch.setattr(real_data, "data_chunks", fail)
  run_config = config_files.load_config(image_run)
  net = sweep.make_feature_net(run_config, inception_weights=None,
                               eval_classifier_config=config,
                               eval_classifier_dir=image_run / "eval_classifier")
  real = real_data.real_statistics(net, run_config, num_real=200,
                                   cache_dir=image_run / "fid_stats", batch_size=32)
  assert real.features.shape == (200, 16) and real.sigma.shape == (16, 16)


def test_errors_name_the_flag(image_run, tmp_path):
  kwargs = dict(num_samples=10, spec_overrides={"num_steps": 2})
  with pytest.raises(ValueError, match="--w must be a non-empty list of finite numbers"):
    evaluation.evaluate(image_run, ws=[0., float("inf")], **kwargs)
  with pytest.raises(ValueError, match="--num_samples must be >= 2"):
    evaluation.evaluate(image_run, ws=[0.], num_samples=1)
  with pytest.raises(ValueError, match=r"--k must lie in \[1, 9\]"):
    evaluation.evaluate(image_run, ws=[0.], k=10, **kwargs)
  with pytest.raises(FileNotFoundError, match="not a cfg_jax training run"):
    evaluation.evaluate(tmp_path, ws=[0.], **kwargs)
  with pytest.raises(FileNotFoundError, match="--inception_weights=.* does not exist"):
    evaluation.evaluate(image_run, ws=[0.], inception_weights=tmp_path / "nope.pth", **kwargs)
  (tmp_path / "bad.pth").write_bytes(b"not the weights")
  with pytest.raises(ValueError, match="--inception_weights=.* has SHA-256"):
    evaluation.evaluate(image_run, ws=[0.], inception_weights=tmp_path / "bad.pth", **kwargs)
  imagenet = test_configs.tiny_image_run()
  imagenet.data.update(source="imagenet_resized/64x64", channels=3, num_classes=1000)
  with pytest.raises(ValueError, match="needs --inception_weights"):
    sweep.make_feature_net(imagenet, inception_weights=None, eval_classifier_config=None,
                           eval_classifier_dir=tmp_path)

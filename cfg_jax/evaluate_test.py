"""Tests of cfg_jax.evaluate: the CLI on a toy2d run, an image run's eval classifier, errors."""
import csv
import os
import subprocess
import sys

from etils import epath
import jax
import numpy as np
import pytest

from cfg_jax import checkpointing
from cfg_jax import config_lib
from cfg_jax import evaluate
from cfg_jax import feature_nets
from cfg_jax import models
from cfg_jax import train
from cfg_jax import train_test

WS = (0., 0.1, 0.3, 0.5, 1., 2., 4.)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "cfg_jax.evaluate", *args], capture_output=True,
                        text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_on_a_toy2d_run_writes_a_row_per_w(tmp_path):
  train.train_and_evaluate(train_test.toy_config(num_steps=8), str(tmp_path))
  proc = _cli(f"--workdir={tmp_path}", "--w=" + ",".join(f"{w:g}" for w in WS),
              "--num_samples=30", "--steps=4", "--num_real=300", "--is_splits=2",
              "--batch_size=16", "--feature_batch_size=32")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "eval"
  with open(out / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  assert [float(r["w"]) for r in rows] == list(WS)
  for row in rows:
    assert row["classifier_scale"] == "" and int(row["num_samples"]) == 30
    assert float(row["fid"]) >= 0 and float(row["inception_score"]) >= 1
    assert 0 <= float(row["precision"]) <= 1 and 0 <= float(row["accuracy"]) <= 1
  table = (out / "metrics.md").read_text()
  assert sum(line.startswith(f"| {w:g} | – |") for w in WS for line in table.splitlines()) == 7
  assert (out / "fid_vs_is.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(list((tmp_path / "fid_stats").glob("points-*.npz"))) == 1
  assert "| w | classifier scale | FID | IS |" in proc.stdout


def test_step_chooses_the_checkpoint_and_the_cli_lists_the_steps_there_are(tmp_path):
  train.train_and_evaluate(train_test.toy_config(num_steps=8), str(tmp_path))
  evaluate.evaluate(tmp_path, ws=[1.], num_samples=12, steps=2, step=4, num_real=60, k=2,
                    is_splits=2, batch_size=12, feature_batch_size=12)
  assert f"# Evaluation of {tmp_path.name} at step 4" in (
      tmp_path / "eval" / "metrics.md").read_text()
  proc = _cli(f"--workdir={tmp_path}", "--step=5", "--w=1", "--num_samples=12", "--steps=2",
              "--num_real=60", "--k=2", "--is_splits=2")
  assert proc.returncode == 1 and proc.stderr.splitlines()[-1] == (
      f"cfg_jax.evaluate: error: --step=5: {tmp_path / 'checkpoints'} has no checkpoint of that "
      f"step; it has steps 4, 8."), proc.stderr[-2000:]


def test_cli_refuses_bad_flags_before_loading_anything(tmp_path):
  proc = _cli(f"--workdir={tmp_path}", "--w=0,nan", "--num_samples=10")
  assert proc.returncode != 0 and "--w must be finite" in proc.stderr


def _tiny_image_config():
  config = config_lib.base_config()
  config.data.image_size = 16
  config.model.update(ch=8, num_res_blocks=1, ch_mult=(1, 2), attn_resolutions=(), num_heads=1,
                      dropout=0.)
  return config


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
  """An untrained MNIST run with random weights: compiling the UNet's train step (or even its
  init) takes tens of seconds on CPU.

  Its checkpoint holds only what `runs.load_run` restores, the EMA parameters.
  """
  workdir = tmp_path_factory.mktemp("image_run")
  config = _tiny_image_config()
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0., 0.1, s.shape).astype(s.dtype),
                        models.param_shapes(models.create_model(config), config))
  checkpointing.save_config(workdir, config)
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=1)
  checkpointer.save(1, {"ema_params": params}, {"signature": checkpointing.signature(config)})
  checkpointer.wait()
  checkpointer.close()
  return workdir


def _tiny_eval_classifier_config():
  config = config_lib.load_config_file(evaluate.DEFAULT_EVAL_CLASSIFIER_CONFIG)
  # feature_nets_test's network, so that the two tests share compiled programs.
  config.model.update(channels=(8,), features=16, dropout=0.)
  config.training.update(num_steps=30, batch_size=32, holdout=100)
  return config


def test_image_run_trains_the_eval_classifier_once_and_caches_statistics(image_run, tmp_path,
                                                                        monkeypatch):
  config = _tiny_eval_classifier_config()
  rows = evaluate.evaluate(image_run, ws=[0., 1.], num_samples=20, steps=2, out=tmp_path,
                           eval_classifier_config=config, num_real=200, is_splits=2,
                           batch_size=20, feature_batch_size=32)
  assert [(r["w"], r["classifier_scale"]) for r in rows] == [(0., None), (1., None)]
  assert all(0 <= r["accuracy"] <= 1 and np.isfinite(r["fid"]) for r in rows)
  assert "Eval classifier" in (tmp_path / "metrics.md").read_text()
  (entry,) = (image_run / "eval_classifier").iterdir()
  assert (entry / "info.json").exists() and (entry / "params.msgpack").exists()

  def fail(*args, **kwargs):
    raise AssertionError("should have come from the cache")

  monkeypatch.setattr(feature_nets, "train_eval_classifier", fail)
  monkeypatch.setattr(feature_nets, "data_chunks", fail)
  run_config = checkpointing.load_config(image_run)
  net = evaluate.make_feature_net(run_config, inception_weights=None,
                                  eval_classifier_config=config,
                                  eval_classifier_dir=image_run / "eval_classifier")
  real = evaluate.real_statistics(net, run_config, num_real=200,
                                  cache_dir=image_run / "fid_stats", batch_size=32)
  assert real.features.shape == (200, 16) and real.sigma.shape == (16, 16)


def test_errors_name_the_flag(image_run, tmp_path):
  kwargs = dict(num_samples=10, steps=2)
  with pytest.raises(ValueError, match="--w must be a non-empty list of finite numbers"):
    evaluate.evaluate(image_run, ws=[0., float("inf")], **kwargs)
  with pytest.raises(ValueError, match="--num_samples must be >= 2"):
    evaluate.evaluate(image_run, ws=[0.], num_samples=1, steps=2)
  with pytest.raises(ValueError, match=r"--k must lie in \[1, 9\]"):
    evaluate.evaluate(image_run, ws=[0.], k=10, **kwargs)
  with pytest.raises(FileNotFoundError, match="not a cfg_jax training run"):
    evaluate.evaluate(tmp_path, ws=[0.], **kwargs)
  with pytest.raises(FileNotFoundError, match="--inception_weights=.* does not exist"):
    evaluate.evaluate(image_run, ws=[0.], inception_weights=tmp_path / "nope.pth", **kwargs)
  (tmp_path / "bad.pth").write_bytes(b"not the weights")
  with pytest.raises(ValueError, match="--inception_weights=.* has SHA-256"):
    evaluate.evaluate(image_run, ws=[0.], inception_weights=tmp_path / "bad.pth", **kwargs)
  imagenet = _tiny_image_config()
  imagenet.data.update(source="imagenet_resized/64x64", channels=3, num_classes=1000)
  with pytest.raises(ValueError, match="needs --inception_weights"):
    evaluate.make_feature_net(imagenet, inception_weights=None, eval_classifier_config=None,
                              eval_classifier_dir=tmp_path)


def test_write_results_with_classifier_scales(tmp_path):
  rows = [dict(w=w, classifier_scale=s, fid=10. - w, inception_score=2. + w,
               inception_score_std=0.1, precision=0.5, recall=0.4, accuracy=float("nan"),
               num_samples=4) for s in (1., 3.) for w in (0., 1.)]
  evaluate.write_results(rows, epath.Path(tmp_path), title="t")
  with open(tmp_path / "metrics.csv") as f:
    written = list(csv.DictReader(f))
  assert [(r["w"], r["classifier_scale"], r["accuracy"]) for r in written] == [
      ("0.0", "1.0", ""), ("1.0", "1.0", ""), ("0.0", "3.0", ""), ("1.0", "3.0", "")]
  assert "| 1 | 3 | 9 | 3 ± 0.1 | 0.500 | 0.400 | – |" in (tmp_path / "metrics.md").read_text()
  assert (tmp_path / "fid_vs_is.png").exists()

"""Tests of restoring a run and sampling it in device batches."""
import logging
import re

import jax
import numpy as np
import pytest

from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import runs
from cfg_jax import test_configs
from cfg_jax import train
from cfg_jax import train_test


def test_make_labels():
  np.testing.assert_array_equal(runs.make_labels(3, num_samples=7), [0, 1, 2, 0, 1, 2, 0])
  np.testing.assert_array_equal(runs.make_labels(3, per_class=2), [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(runs.make_labels(3, labels=[2, 2, 0]), [2, 2, 0])
  with pytest.raises(ValueError, match=r"--labels must be .* classes in \[0, 3\), got \[3\]"):
    runs.make_labels(3, labels=[0, 3])
  with pytest.raises(ValueError, match="exactly one of"):
    runs.make_labels(3, num_samples=4, per_class=1)
  with pytest.raises(ValueError, match="--num_samples must be >= 1"):
    runs.make_labels(3, num_samples=0)


def test_a_sampling_spec_is_the_runs_config_sampling_with_overrides_validated():
  config = test_configs.toy2d(num_steps=4)
  config.sampling.guidance_interval = (-1., 3.)
  spec = runs.sampling_spec(config)
  assert spec.to_dict() == config.sampling.to_dict()
  assert runs.describe_guidance(spec) == "cfg for λ in [-1, 3]"
  spec = runs.sampling_spec(config, {"guidance_interval": (), "guidance": "apg",
                                     "guidance_params.eta": 0.5, "w_schedule": "cosine"})
  assert spec.guidance_params.eta == 0.5 and config.sampling.guidance_params.eta == 0.
  assert runs.describe_guidance(spec) == ("apg (eta=0.5, norm_threshold=0, momentum=0), w cosine "
                                          "over the steps at every step")
  with pytest.raises(ValueError, match=r"Unknown config field config.sampling.guidance_params.z"):
    runs.sampling_spec(config, {"guidance_params.z": 1.})
  with pytest.raises(ValueError, match=r"config.sampling.v=2.0 is invalid: it must be a number"):
    runs.sampling_spec(config, {"v": 2.})
  with pytest.raises(ValueError, match="config.sampling.guidance='cfgpp' is CFG\\+\\+ for the "
                                       "deterministic sampler"):
    runs.sampling_spec(config, {"guidance": "cfgpp", "sampler": "stochastic"})


def test_load_run_and_sample_in_batches(tmp_path):
  config = test_configs.toy2d(num_steps=4)
  train.train(config, str(tmp_path))
  run = runs.load_run(tmp_path)
  assert run.step == 4 and run.config.model.mlp_hidden == 64
  _, _, state = train_test.final_state(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.params), state["ema_params"])
  sample_fn = runs.make_run_sample_fn(run, runs.sampling_spec(run.config, {"num_steps": 4}))
  labels = runs.make_labels(3, num_samples=10)
  x = runs.sample_in_batches(sample_fn, run.params, labels, w=1., batch_size=4, seed=0,
                             progress=False)
  assert x.shape == (10, 2) and np.all(np.isfinite(x))
  # Batching is deterministic: the same call gives the same samples.
  again = runs.sample_in_batches(sample_fn, run.params, labels, w=1., batch_size=4, seed=0,
                                 progress=False)
  np.testing.assert_array_equal(x, again)
  grid = list(runs.sample_guidance_grid(sample_fn, run, labels, ws=[0., 1.], batch_size=4,
                                        seed=0))
  assert [(scale, w) for scale, w, _ in grid] == [(None, 0.), (None, 1.)]
  np.testing.assert_array_equal(grid[1][2], x)


def test_load_run_of_a_folder_that_is_not_a_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a cfg_jax training run"):
    runs.load_run(tmp_path)


def test_load_run_reads_past_a_damaged_checkpoint_and_moves_nothing(tmp_path, caplog):
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path))
  train_test.DAMAGE["truncated array files"](tmp_path / "checkpoints" / "8")
  before = train_test.files_under(tmp_path)
  with caplog.at_level(logging.WARNING):
    run = runs.load_run(tmp_path)
  (warning,) = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert re.fullmatch(rf"Checkpoint step 8 in {tmp_path}/checkpoints cannot be restored "
                      rf"\(ValueError: OUT_OF_RANGE: [^\n]+\); using step 4 instead\.", warning)
  assert run.step == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.params),
               jax.device_get(runs.load_run(tmp_path, step=4).params))
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match=r"^Checkpoint step 8 in .* cannot be restored \(ValueError: OUT_OF"):
    runs.load_run(tmp_path, step=8)
  with pytest.raises(ValueError, match=r"^--step=5: .*/checkpoints has no checkpoint of that "
                                       r"step; it has steps 4, 8\.$"):
    runs.load_run(tmp_path, step=5)
  assert train_test.files_under(tmp_path) == before


def test_a_classifier_workdir_needs_its_scales_and_the_scales_their_workdir(tmp_path):
  run_config = test_configs.tiny_model("unet")
  assert runs.load_classifier(None, None, run_config=run_config) is None
  for workdir, scales in ((tmp_path, None), (None, [1.])):
    with pytest.raises(ValueError, match="--classifier_workdir and --classifier_scale go "
                       "together"):
      runs.load_classifier(workdir, scales, run_config=run_config)
  with pytest.raises(FileNotFoundError, match=r"--classifier_workdir=.* holds no config.json"):
    runs.load_classifier(tmp_path, [1.], run_config=run_config)


@pytest.mark.parametrize("field, value, named", [
    ("image_size", 32, r"classifies examples of shape \(32, 32, 3\) into 3 classes; the run "
                       r"samples \(16, 16, 3\) of 3 classes"),
    ("num_classes", 10, r"classifies examples of shape \(16, 16, 3\) into 10 classes"),
])
def test_a_classifier_of_other_examples_or_classes_is_refused_before_its_weights_are_read(
    tmp_path, field, value, named):
  classifier = test_configs.tiny_model("classifier")
  classifier.data[field] = value
  (tmp_path / config_files.CONFIG_FILE).write_text(classifier.to_json())
  with pytest.raises(ValueError, match=named):  # no checkpoint: only its config is read
    runs.load_classifier(tmp_path, [1.], run_config=test_configs.tiny_model("unet"))
  unet = test_configs.tiny_model("unet")
  (tmp_path / config_files.CONFIG_FILE).write_text(unet.to_json())
  with pytest.raises(ValueError, match="holds a 'unet' model, not a classifier"):
    runs.load_classifier(tmp_path, [1.], run_config=unet)


@pytest.mark.parametrize("change, named", [
    (dict(model=dict(name="classifier")), "holds a classifier; the guide must be a conditional"),
    (dict(model=dict(w_emb_ch=16)), "holds a distilled student"),
    (dict(data=dict(num_classes=10)), r"models examples of shape \(16, 16, 3\) in 10 classes"),
    (dict(diffusion=dict(prediction="v")), "predicting 'v'; the run: .* 'eps'"),
])
def test_a_guide_of_other_examples_or_outputs_is_refused_before_its_weights_are_read(
    tmp_path, change, named):
  run = runs.Run(test_configs.tiny_model("unet"), None, None, 0)
  guide = test_configs.tiny_model("unet")
  for group, fields in change.items():
    guide[group].update(fields)
  (tmp_path / config_files.CONFIG_FILE).write_text(guide.to_json())
  with pytest.raises(ValueError, match=named):  # no checkpoint: only its config is read
    runs.load_guide(tmp_path, step=None, run=run)
  with pytest.raises(FileNotFoundError, match=r"--guide_workdir=.* holds no config.json"):
    runs.load_guide(tmp_path / "nope", step=None, run=run)

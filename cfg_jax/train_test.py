"""Tests of the training loop: Algorithm 1, checkpoints and resume, devices, config errors."""
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

from etils import epath
import jax
import numpy as np
import pytest

from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import config_lib
from cfg_jax import ema_snapshots
from cfg_jax import input_pipeline
from cfg_jax import models
from cfg_jax import test_configs
from cfg_jax import train

ROOT = epath.Path(__file__).parent.parent


def final_state(workdir):
  """The params and EMA params of the latest checkpoint in workdir, as numpy."""
  ckpt = checkpointing.Checkpointer(workdir, read_only=True)
  step = ckpt.latest_step()
  meta = ckpt.restore_meta(step)
  restored = ckpt.restore_raw(step)
  ckpt.close()
  return step, meta, jax.tree.map(np.asarray, restored)


def _array_files(step_dir):
  return [p for p in step_dir.glob("state/**/d/*") if p.is_file()]


def _write(path, text):
  path.write_text(text)


# What a node crash on a network filesystem or a half-synced copy leaves of a checkpoint.
DAMAGE = {
    "truncated array files": lambda d: [os.truncate(p, p.stat().st_size // 2)
                                        for p in _array_files(d)],
    "missing array files": lambda d: [p.unlink() for p in _array_files(d)],
    "unreadable metadata": lambda d: [_write(d / "meta" / "metadata", "{"),
                                      _write(d / "state" / "_METADATA", "{")],
    "missing meta item": lambda d: shutil.rmtree(d / "meta"),
}


def files_under(folder):
  """{relative path: bytes} of every file under `folder`."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def test_train_writes_checkpoints_events_and_samples(tmp_path):
  config = test_configs.toy2d(num_steps=8, sample_every=8)
  assert train.train(config, str(tmp_path)) == 0
  step, meta, state = final_state(tmp_path)
  assert step == 8 and meta["data_step"] == 8 and int(state["step"]) == 8
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4", "8"]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
      "step_00000008_w0.png", "step_00000008_w1.png"]
  # EMA lags the live weights.
  live, ema = jax.tree.leaves(state["params"]), jax.tree.leaves(state["ema_params"])
  assert any(not np.allclose(a, b) for a, b in zip(live, ema))


def test_loss_falls(tmp_path):
  config = test_configs.toy2d(num_steps=300, batch_size=64, log_every=100, checkpoint_every=1000)
  train.train(config, str(tmp_path))
  _, _, state = final_state(tmp_path)
  model = models.create_model(config)
  tx, _ = train.create_optimizer(config)
  initial = train.create_train_state(config, model, tx).params
  batch = input_pipeline.create_dataset(config).batch(0, batch_size=2048)
  rng = jax.random.PRNGKey(1)
  loss = lambda params: float(train.diffusion_loss(params, model, batch, rng, config)[0])
  assert loss(state["ema_params"]) < 0.7 * loss(initial)


def test_resume_gives_identical_parameters(tmp_path):
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path / "straight"))
  train.train(test_configs.toy2d(num_steps=4), str(tmp_path / "resumed"))
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path / "resumed"))
  _, _, straight = final_state(tmp_path / "straight")
  _, _, resumed = final_state(tmp_path / "resumed")
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)


def test_power_ema_resumes_bit_for_bit_with_its_snapshots(tmp_path):
  power = dict(ema="power", ema_sigma_rels=(0.05, 0.1, 0.2), ema_snapshot_every=3)
  train.train(test_configs.toy2d(num_steps=8, **power), str(tmp_path / "straight"))
  train.train(test_configs.toy2d(num_steps=4, **power), str(tmp_path / "resumed"))
  train.train(test_configs.toy2d(num_steps=8, **power), str(tmp_path / "resumed"))
  _, meta, straight = final_state(tmp_path / "straight")
  _, _, resumed = final_state(tmp_path / "resumed")
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  assert meta["ema"] == {"training.ema": "power", "training.ema_sigma_rels": [0.05, 0.1, 0.2]}
  # The snapshots: every 3 steps, each stopped run's last step, every width, identical.
  assert ema_snapshots.snapshot_steps(tmp_path / "straight") == [3, 6, 8]
  assert ema_snapshots.snapshot_steps(tmp_path / "resumed") == [3, 4, 6, 8]
  config = test_configs.toy2d(**power)
  snapshot = lambda run: list(ema_snapshots.read_snapshots(run, config, [6, 8]))
  jax.tree.map(np.testing.assert_array_equal, snapshot(tmp_path / "straight"),
               snapshot(tmp_path / "resumed"))
  np.testing.assert_array_equal(snapshot(tmp_path / "straight")[4]["dense_out"]["kernel"],
                                straight["extra_emas"][0]["dense_out"]["kernel"])
  # ema_params is the first width's, the state's other EMAs the rest; wider lags more.
  live = np.concatenate([x.ravel() for x in jax.tree.leaves(straight["params"])])
  widths = [straight["ema_params"], *straight["extra_emas"]]
  gaps = [np.linalg.norm(np.concatenate([x.ravel() for x in jax.tree.leaves(e)]) - live)
          for e in widths]
  assert len(widths) == 3 and 0 < gaps[0] < gaps[1] < gaps[2], gaps


def test_a_constant_ema_run_is_unchanged_and_resumes_checkpoints_from_before_power_emas(
    tmp_path):
  """Checkpoints written before the state had extra_emas hold no such item."""
  train.train(test_configs.toy2d(num_steps=4), str(tmp_path / "new"))
  _, meta, state = final_state(tmp_path / "new")
  assert meta["ema"] == {"training.ema": "constant"} and state["extra_emas"] == ()
  old = checkpointing.Checkpointer(tmp_path / "old", max_to_keep=3)
  old.save(4, {k: v for k, v in state.items() if k != "extra_emas"},
           {k: v for k, v in meta.items() if k != "ema"})
  old.wait()
  old.close()
  config_files.save_config(tmp_path / "old", test_configs.toy2d(num_steps=8))
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path / "old"))
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path / "new"))
  jax.tree.map(np.testing.assert_array_equal, final_state(tmp_path / "old")[2],
               final_state(tmp_path / "new")[2])


def test_a_run_refuses_to_resume_with_other_emas(tmp_path):
  train.train(test_configs.toy2d(num_steps=4, ema="power"), str(tmp_path))
  before = files_under(tmp_path / "checkpoints")
  for ema, match in [("constant", r"config.training.ema: checkpoint has 'power', config has "
                      r"'constant'$"),
                     ("power", r"config.training.ema_sigma_rels: checkpoint has \[0.05, 0.1\], "
                      r"config has \[0.05, 0.2\]")]:
    config = test_configs.toy2d(num_steps=8, ema=ema, ema_sigma_rels=(0.05, 0.2))
    with pytest.raises(checkpointing.ModelMismatchError, match=match):
      train.train(config, str(tmp_path))
  assert files_under(tmp_path / "checkpoints") == before


def test_refuses_a_checkpoint_of_another_model(tmp_path):
  train.train(test_configs.toy2d(num_steps=4), str(tmp_path))
  config = test_configs.toy2d(num_steps=8)
  config.model.mlp_hidden = 32
  with pytest.raises(ValueError, match=r"config.model.mlp_hidden: checkpoint has 64, config has 32"):
    train.train(config, str(tmp_path))


@pytest.fixture(scope="module")
def straight_to_12(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  train.train(test_configs.toy2d(num_steps=12), str(workdir))
  return final_state(workdir)[2]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_is_moved_aside_and_training_resumes_from_the_one_before(
    tmp_path, caplog, straight_to_12, damage):
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path))
  DAMAGE[damage](tmp_path / "checkpoints" / "8")
  damaged = files_under(tmp_path / "checkpoints" / "8")
  with caplog.at_level(logging.WARNING):
    assert train.train(test_configs.toy2d(num_steps=12), str(tmp_path)) == 0
  (moved,) = (tmp_path / "damaged_checkpoints").iterdir()
  assert re.fullmatch(r"8-\d{8}T\d{6}Z", moved.name) and files_under(moved) == damaged
  (warning,) = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert re.fullmatch(rf"Checkpoint step 8 in {tmp_path}/checkpoints cannot be restored "
                      rf"\([A-Za-z]+Error: [^\n]+\); resuming from step 4\. The damaged "
                      rf"checkpoint was moved to {moved}\.", warning), warning
  step, _, state = final_state(tmp_path)
  assert step == 12 and sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
      "12", "4", "8"]
  jax.tree.map(np.testing.assert_array_equal, straight_to_12, state)


def test_when_no_checkpoint_restores_training_stops_naming_each_and_changes_nothing(tmp_path):
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path))
  DAMAGE["truncated array files"](tmp_path / "checkpoints" / "8")
  DAMAGE["missing meta item"](tmp_path / "checkpoints" / "4")
  before = files_under(tmp_path)
  with pytest.raises(checkpointing.CheckpointRestoreError) as error:
    train.train(test_configs.toy2d(num_steps=12), str(tmp_path))
  assert re.fullmatch(rf"No checkpoint in {tmp_path}/checkpoints can be restored: step 8 "
                      rf"\(ValueError: OUT_OF_RANGE: [^\n]+\); step 4 \(KeyError: Item "
                      rf"\"meta\" was not found [^\n]+\)\. Nothing was moved or deleted[^\n]+",
                      str(error.value)), str(error.value)
  assert files_under(tmp_path) == before


def test_a_run_resumes_with_remat_switched_on(tmp_path):
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path / "straight"))
  train.train(test_configs.toy2d(num_steps=4), str(tmp_path / "resumed"))
  config = test_configs.toy2d(num_steps=8)
  config.model.remat = True  # not part of the checkpoint's signature: same parameters
  train.train(config, str(tmp_path / "resumed"))
  _, _, straight = final_state(tmp_path / "straight")
  step, _, resumed = final_state(tmp_path / "resumed")
  assert step == 8
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               resumed, straight)


@pytest.mark.parametrize("lr_schedule,rates", [
    ("constant", {0: 0., 5: 0.5, 10: 1., 60: 1., 110: 1., 500: 1.}),
    ("cosine", {0: 0., 5: 0.5, 10: 1., 60: 0.5, 110: 0., 500: 0.}),
])
def test_learning_rate_warms_up_then_is_constant_or_cosine(lr_schedule, rates):
  config = test_configs.toy2d(num_steps=110)
  config.training.update(learning_rate=1., warmup_steps=10, lr_schedule=lr_schedule)
  _, schedule = train.create_optimizer(config)
  for step, rate in rates.items():
    np.testing.assert_allclose(float(schedule(step)), rate, atol=1e-6, err_msg=f"step {step}")


def test_p_uncond_replaces_labels_with_null():
  config = test_configs.toy2d()
  seen = {}

  class Spy:
    def apply(self, variables, z, logsnr, labels, **kwargs):
      seen["labels"] = labels
      return z

  batch = {"x": np.zeros((20_000, 2), np.float32), "label": np.zeros((20_000,), np.int32)}
  for p_uncond in (0., 0.2, 1.):
    config.training.p_uncond = p_uncond
    train.diffusion_loss(None, Spy(), batch, jax.random.PRNGKey(0), config)
    null_rate = float(np.mean(np.asarray(seen["labels"]) == config.data.num_classes))
    np.testing.assert_allclose(null_rate, p_uncond, atol=0.01)


def _mnist_like(name, dtype):
  """configs/<name>.py at 16x16 with two levels (to compile in seconds) and compute dtype
  `dtype`, every parameter perturbed (no layer at zero), a fixed random batch of 16."""
  config = test_configs.preset(name)
  config.data.image_size = 16
  config.model.update(ch_mult=(1, 2), attn_resolutions=(8,), dtype=dtype)
  model = models.create_model(config)
  params = models.init_params(model, jax.random.PRNGKey(0), config)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32), params)
  batch = {"x": rng.uniform(-1, 1, (16,) + config_lib.example_shape(config)).astype(np.float32),
           "label": rng.integers(0, config.data.num_classes, 16).astype(np.int32)}
  return config, model, params, batch


@pytest.mark.parametrize("name,loss_fn", [("mnist", train.diffusion_loss),
                                          ("mnist_classifier", train.classifier_loss)])
def test_bfloat16_loss_and_gradients_agree_with_float32(name, loss_fn):
  """bfloat16 keeps 8 significant bits (2^-9 ~ 2e-3 relative rounding per operation). Over
  8 seeds of parameters and batch the losses differed by at most 1.2e-3 relative and the
  gradients' cosine similarity was at least 0.999: the bounds 1e-2 and 0.99 leave a margin
  of about 8x and 10x."""
  results = {}
  for dtype in ("float32", "bfloat16"):
    config, model, params, batch = _mnist_like(name, dtype)
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda p: loss_fn(p, model, batch, jax.random.PRNGKey(1), config)[0]))
    results[dtype] = value_and_grad(params)
  (loss32, grads32), (loss16, grads16) = results["float32"], results["bfloat16"]
  assert loss16.dtype == np.float32
  np.testing.assert_allclose(loss16, loss32, rtol=1e-2)
  flat = lambda tree: np.concatenate([np.ravel(g) for g in jax.tree.leaves(tree)])
  g32, g16 = flat(grads32), flat(grads16)
  assert g32 @ g16 / np.linalg.norm(g32) / np.linalg.norm(g16) > 0.99


def test_a_bfloat16_step_keeps_parameters_gradients_and_optimizer_state_in_float32():
  config, model, _, batch = _mnist_like("mnist", "bfloat16")
  tx, schedule = train.create_optimizer(config)
  state = jax.eval_shape(lambda: train.create_train_state(config, model, tx))
  step = functools.partial(train.train_step, model=model, tx=tx, schedule=schedule, config=config)
  new_state, metrics = jax.eval_shape(step, state, batch)
  grads = jax.eval_shape(jax.grad(lambda p: train.diffusion_loss(
      p, model, batch, jax.random.PRNGKey(1), config)[0]), state.params)
  floats = lambda tree: {x.dtype for x in jax.tree.leaves(tree) if x.dtype.kind == "f"}
  for tree in (new_state.params, new_state.ema_params, new_state.opt_state, grads, metrics):
    assert floats(tree) == {np.dtype(np.float32)}


def nan_loss(params, model, batch, rng, config, _loss=train.diffusion_loss):
  loss, metrics = _loss(params, model, batch, rng, config)
  return loss * np.nan, metrics


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  train.train(test_configs.toy2d(num_steps=4), str(tmp_path))
  _, _, good = final_state(tmp_path)
  monkeypatch.setattr(train, "diffusion_loss", nan_loss)
  with pytest.raises(train.NonFiniteError, match=r"at step 4; .* checkpoint \(step 4\)"):
    train.train(test_configs.toy2d(num_steps=8), str(tmp_path))
  step, _, after = final_state(tmp_path)
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, good, after)


def test_nonfinite_skip_leaves_the_parameters_unchanged(tmp_path, monkeypatch):
  train.train(test_configs.toy2d(num_steps=4), str(tmp_path))
  _, _, good = final_state(tmp_path)
  monkeypatch.setattr(train, "diffusion_loss", nan_loss)
  config = test_configs.toy2d(num_steps=8)
  config.training.nonfinite = "skip"
  train.train(config, str(tmp_path))
  step, _, after = final_state(tmp_path)
  assert step == 8 and int(after["nonfinite_steps"]) == 4 and int(after["first_nonfinite_step"]) == 4
  jax.tree.map(np.testing.assert_array_equal, good["params"], after["params"])
  jax.tree.map(np.testing.assert_array_equal, good["ema_params"], after["ema_params"])


def test_a_failed_checkpoint_write_stops_clearly_and_keeps_earlier_ones(tmp_path, monkeypatch):
  train.train(test_configs.toy2d(num_steps=4), str(tmp_path))
  _, _, good = final_state(tmp_path)

  def full_disk(self, step, *args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(checkpointing.CheckpointWriteError,
                     match=r"step 8 .*No space left on device.*latest complete: step 4"):
    train.train(test_configs.toy2d(num_steps=8), str(tmp_path))
  monkeypatch.undo()
  step, _, after = final_state(tmp_path)
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, good, after)


def _cli(workdir, *overrides, env=None, **popen):
  cmd = [sys.executable, "-m", "cfg_jax.train", f"--config={ROOT / 'configs' / 'toy2d.py'}",
         f"--workdir={workdir}", "--config.training.batch_size=16",
         "--config.training.log_every=2", "--config.training.sample_every=1000",
         "--config.data.toy2d_num_examples=1024", "--config.sampling.num_steps=4", *overrides]
  return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


def test_four_devices_match_one_device_and_overrides_apply(tmp_path):
  runs = {}
  for devices in (1, 4):
    proc = _cli(tmp_path / str(devices), "--config.training.num_steps=6",
                "--config.training.checkpoint_every=3",
                env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    runs[devices] = final_state(tmp_path / str(devices))
  assert runs[1][0] == runs[4][0] == 6  # --config.training.num_steps took effect
  assert sorted(p.name for p in (tmp_path / "4" / "checkpoints").iterdir()) == ["3", "6"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               runs[1][2], runs[4][2])


def test_unknown_override_key_is_refused(tmp_path):
  proc = _cli(tmp_path, "--config.training.p_uncnod=0.2")
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode != 0 and 'Did you mean "p_uncond"' in out, out[-2000:]
  assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_sigterm_saves_and_exits_with_the_preemption_code(tmp_path):
  proc = _cli(tmp_path, "--config.training.num_steps=100000",
              "--config.training.checkpoint_every=100000")
  for line in proc.stdout:  # wait until training runs: the first metrics line
    if "grad_norm=" in line:
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == train.PREEMPTED_EXIT_CODE, out
  step, meta, state = final_state(tmp_path)
  assert 2 <= step < 100000 and meta["data_step"] == step == int(state["step"])
  assert not (tmp_path / "train.lock").exists()


@pytest.mark.parametrize("field,value,match", [
    ("training.p_uncond", 1.5, r"config.training.p_uncond=1.5 is invalid: it must be a number in \[0, 1\]"),
    ("training.p_uncond", -0.1, r"config.training.p_uncond=-0.1"),
    ("training.batch_size", 0, r"config.training.batch_size=0"),
    ("training.ema", "karras", r"config.training.ema='karras' is invalid: it must be one of "
     r"\('constant', 'power'\)"),
    ("training.ema_sigma_rels", (0.05, 0.3), r"config.training.ema_sigma_rels=\(0.05, 0.3\) is "
     r"invalid: it must be a non-empty tuple of distinct widths in \(0, 0.2887\)"),
    ("training.ema_snapshot_every", 0, r"config.training.ema_snapshot_every=0"),
    ("data.source", "imagenet_typo_not_a_dataset", r"config.data.source"),
    ("data.source", "folder:/nonexistent/cfg_jax", r"config.data.source"),
])
def test_invalid_config_fails_before_compiling(tmp_path, field, value, match):
  config = test_configs.toy2d()
  group, name = field.split(".")
  config[group][name] = value
  with pytest.raises(ValueError, match=match):
    train.train(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()

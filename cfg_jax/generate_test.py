"""The generate CLI on a tiny trained run: grids and npz per w, guidance interval, errors."""
import subprocess
import sys

import numpy as np

from cfg_jax import runs
from cfg_jax import test_configs
from cfg_jax import train


def _sample(workdir, out, *flags):
  return subprocess.run([sys.executable, "-m", "cfg_jax.generate", f"--workdir={workdir}",
                         f"--out={out}", "--sampling.num_steps=8", "--batch_size=16", *flags],
                        capture_output=True, text=True, timeout=600)


def test_generate_cli_writes_grids_and_npz_and_interval_outside_equals_w0(tmp_path):
  train.train(test_configs.toy2d(num_steps=4), str(tmp_path / "run"))
  done = _sample(tmp_path / "run", tmp_path / "out", "--w=0,1,3", "--per_class=5")
  assert done.returncode == 0, done.stderr[-3000:]
  for w in ("0", "1", "3"):
    assert (tmp_path / "out" / f"w{w}.png").stat().st_size > 0
    with np.load(tmp_path / "out" / f"w{w}.npz") as f:
      assert f["points"].shape == (15, 2)
      np.testing.assert_array_equal(f["labels"], np.repeat(np.arange(3), 5))
  # A guidance interval that holds no step of the schedule is plain w = 0 sampling.
  done = _sample(tmp_path / "run", tmp_path / "none", "--w=3", "--per_class=5",
                 "--sampling.guidance_interval=(30,40)")
  assert done.returncode == 0, done.stderr[-3000:]
  with np.load(tmp_path / "none" / "w3.npz") as a, np.load(tmp_path / "out" / "w0.npz") as b:
    np.testing.assert_array_equal(a["points"], b["points"])


def test_the_runs_guidance_interval_is_the_default_and_an_empty_flag_guides_every_step(
    tmp_path):
  config = test_configs.toy2d(num_steps=4)
  config.sampling.guidance_interval = (30., 40.)  # holds no step of the schedule
  train.train(config, str(tmp_path / "run"))
  for name, flags in (("w0", ["--w=0"]), ("default", ["--w=3"]),
                      ("every", ["--w=3", "--sampling.guidance_interval=()"])):
    done = _sample(tmp_path / "run", tmp_path / name, "--per_class=5", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
  points = lambda name, w: np.load(tmp_path / name / f"w{w}.npz")["points"]
  np.testing.assert_array_equal(points("default", 3), points("w0", 0))
  run = runs.load_run(tmp_path / "run")
  spec = runs.sampling_spec(run.config, {"num_steps": 8, "guidance_interval": ()})
  every = runs.sample_in_batches(runs.make_run_sample_fn(run, spec), run.params,
                                 runs.make_labels(3, per_class=5), w=3., batch_size=16, seed=0,
                                 progress=False)
  np.testing.assert_allclose(points("every", 3), every, rtol=1e-5, atol=1e-5)
  assert not np.allclose(points("every", 3), points("w0", 0))
  done = _sample(tmp_path / "run", tmp_path / "bad", "--w=3", "--sampling.guidance_interval=2,1")
  assert done.returncode == 1 and done.stderr.splitlines()[-1] == (
      "cfg_jax.generate: error: config.sampling.guidance_interval=(2, 1) is invalid: it must be "
      "() to guide every step, or (logsnr_lo, logsnr_hi) with lo <= hi.")


def test_generate_cli_rejects_bad_inputs(tmp_path):
  train.train(test_configs.toy2d(num_steps=4), str(tmp_path / "run"))
  done = _sample(tmp_path / "run", tmp_path / "out", "--w=nan", "--per_class=1")
  assert done.returncode != 0 and "--w must be finite" in done.stderr
  done = _sample(tmp_path / "run", tmp_path / "out", "--labels=0,7")
  assert done.returncode != 0 and "--labels must be" in done.stderr
  assert not (tmp_path / "out").exists()


def test_generate_cli_step_chooses_the_checkpoint_and_lists_the_steps_there_are(tmp_path):
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path / "run"))
  done = _sample(tmp_path / "run", tmp_path / "out", "--w=1", "--per_class=2", "--step=4")
  assert done.returncode == 0, done.stderr[-3000:]
  run = runs.load_run(tmp_path / "run", step=4)
  labels = runs.make_labels(3, per_class=2)
  spec = runs.sampling_spec(run.config, {"num_steps": 8})
  expected = runs.sample_in_batches(runs.make_run_sample_fn(run, spec), run.params,
                                    labels, w=1., batch_size=16, seed=0, progress=False)
  with np.load(tmp_path / "out" / "w1.npz") as f:
    np.testing.assert_allclose(f["points"], expected, rtol=1e-5, atol=1e-5)
  done = _sample(tmp_path / "run", tmp_path / "none", "--w=1", "--per_class=2", "--step=5")
  assert done.returncode == 1 and done.stderr.splitlines()[-1] == (
      f"cfg_jax.generate: error: --step=5: {tmp_path / 'run' / 'checkpoints'} has no checkpoint "
      f"of that step; it has steps 4, 8.")
  assert not (tmp_path / "none").exists()


def test_sampling_overrides_choose_the_rule_and_bad_ones_are_one_line_errors(tmp_path):
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path / "run"))
  done = _sample(tmp_path / "run", tmp_path / "apg", "--w=2", "--per_class=2",
                 "--sampling.guidance=apg", "--sampling.guidance_params.eta=0.5",
                 "--sampling.guidance_params.momentum=-0.5", "--sampling.sampler=ddim")
  assert done.returncode == 0, done.stderr[-3000:]
  run = runs.load_run(tmp_path / "run")
  spec = runs.sampling_spec(run.config, {"num_steps": 8, "guidance": "apg", "sampler": "ddim",
                                         "guidance_params.eta": 0.5,
                                         "guidance_params.momentum": -0.5})
  expected = runs.sample_in_batches(runs.make_run_sample_fn(run, spec), run.params,
                                    runs.make_labels(3, per_class=2), w=2., batch_size=16,
                                    seed=0, progress=False)
  with np.load(tmp_path / "apg" / "w2.npz") as f:
    np.testing.assert_allclose(f["points"], expected, rtol=1e-5, atol=1e-5)
  for flag, message in (
      ("--sampling.guidance_params.etta=0", "cfg_jax.generate: error: "
       "--sampling.guidance_params.etta is not a config field; the fields are those of "
       "cfg_jax.config_lib.base_config().sampling. Did you mean \"eta\"?"),
      ("--sampling.guidance=cfgpp", "cfg_jax.generate: error: config.sampling.guidance='cfgpp' "
       "is CFG++ for the deterministic sampler: it needs config.sampling.sampler='ddim', got "
       "'stochastic'."),
      ("--sampling.guidance_params.momentum=1.5", "cfg_jax.generate: error: "
       "config.sampling.guidance_params.momentum=1.5 is invalid: it must be a number in (-1, "
       "1)."),
  ):
    done = _sample(tmp_path / "run", tmp_path / "bad", "--w=1", "--per_class=1", flag)
    assert done.returncode == 1 and done.stderr.splitlines()[-1] == message, done.stderr[-2000:]
  assert not (tmp_path / "bad").exists()


def test_autoguidance_by_an_earlier_checkpoint_of_the_run(tmp_path):
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path / "run"))
  done = _sample(tmp_path / "run", tmp_path / "auto", "--w=2", "--per_class=2", "--guide_step=4")
  assert done.returncode == 0, done.stderr[-3000:]
  run, guide = runs.load_run(tmp_path / "run"), runs.load_run(tmp_path / "run", step=4)
  spec = runs.sampling_spec(run.config, {"num_steps": 8})
  sample_fn = runs.make_run_sample_fn(run, spec, guide=guide)
  expected = runs.sample_in_batches(sample_fn, run.params, runs.make_labels(3, per_class=2),
                                    w=2., batch_size=16, seed=0, guide_params=guide.params,
                                    progress=False)
  with np.load(tmp_path / "auto" / "w2.npz") as f:
    np.testing.assert_allclose(f["points"], expected, rtol=1e-5, atol=1e-5)
  plain = runs.sample_in_batches(runs.make_run_sample_fn(run, spec), run.params,
                                 runs.make_labels(3, per_class=2), w=2., batch_size=16, seed=0,
                                 progress=False)
  assert not np.allclose(expected, plain)
  done = _sample(tmp_path / "run", tmp_path / "bad", "--w=1", "--per_class=1",
                 f"--guide_workdir={tmp_path / 'nowhere'}")
  assert done.returncode == 1 and "--guide_workdir=" in done.stderr.splitlines()[-1]

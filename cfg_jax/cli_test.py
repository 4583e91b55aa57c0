"""The flag parsing shared by the generate and evaluate CLIs."""
from absl import app
import pytest

from cfg_jax import cli


def test_parse_floats_names_the_flag():
  assert cli.parse_floats("w", ["0", "1.5"]) == [0., 1.5]
  assert cli.parse_floats("w", None) is None
  with pytest.raises(app.UsageError, match="--w must be a comma-separated list of numbers"):
    cli.parse_floats("w", ["one"])
  with pytest.raises(app.UsageError, match="--classifier_scale must be finite, got 1,inf"):
    cli.parse_floats("classifier_scale", ["1", "inf"])

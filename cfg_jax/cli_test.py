"""The flag parsing shared by the sample and evaluate CLIs."""
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


def test_a_classifier_workdir_needs_its_scales_and_the_scales_their_workdir(tmp_path):
  assert cli.load_classifier(None, None) is None
  for workdir, scales in ((tmp_path, None), (None, [1.])):
    with pytest.raises(ValueError, match="--classifier_workdir and --classifier_scale go "
                       "together"):
      cli.load_classifier(workdir, scales)
  with pytest.raises(FileNotFoundError, match=r"--classifier_workdir=.* holds no config.json"):
    cli.load_classifier(tmp_path, [1.])

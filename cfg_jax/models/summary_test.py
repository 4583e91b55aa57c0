"""Tests of the model summary and its command line."""
import subprocess
import sys

from cfg_jax import test_configs
from cfg_jax.models import summary


def test_imagenet64_summary_counts_and_resolutions():
  text = summary.summarize(test_configs.preset("imagenet64"))
  assert text.startswith("UNet (unet): 295,900,035 parameters")
  rows = [line.split() for line in text.splitlines()[4:]]
  assert [r[:2] for r in rows if r[0] == "down"][::2] == [
      ["down", "64x64x192"], ["down", "32x32x384"], ["down", "16x16x576"], ["down", "8x8x768"]]
  assert ["mid", "8x8x768", "res", "x2,", "attn"] == rows[[r[0] for r in rows].index("mid")][:5]
  assert rows[-1][:3] == ["out", "64x64x3", "out_conv"]


def test_command_line(tmp_path):
  config_file = tmp_path / "tiny.py"
  config_file.write_text(
      "from cfg_jax import config_lib\n"
      "def get_config():\n"
      "  config = config_lib.base_config()\n"
      "  config.data.update(source='toy2d', num_classes=3)\n"
      "  config.model.update(name='mlp', mlp_hidden=16, mlp_depth=2)\n"
      "  return config\n")
  result = subprocess.run([sys.executable, "-m", "cfg_jax.models", f"--config={config_file}"],
                          capture_output=True, text=True, check=True)
  assert "MLP (mlp): 3,026 parameters" in result.stdout
  rows = [line.split() for line in result.stdout.splitlines()[4:]]
  assert [r[0] for r in rows] == ["embed", "in", "block", "out", "out"]
  assert rows[2][1:4] == ["16", "block", "x2"]

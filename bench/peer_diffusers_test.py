"""Tests of the diffusers peer: output shape and parameter count against our mnist UNet, and
`measure` in bfloat16."""
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from bench import common  # pylint: disable=g-import-not-at-top
from bench import peer_diffusers  # pylint: disable=g-import-not-at-top
from cfg_jax import models  # pylint: disable=g-import-not-at-top


def _build(config):
  return peer_diffusers.build_unet(**common.peer_unet(config))


def test_output_shape_with_null_label():
  config = common.small_config()
  model = _build(config).eval()
  d = config.data
  z = torch.randn(2, d.channels, d.image_size, d.image_size)
  labels = torch.tensor([3, d.num_classes])  # a class and ∅
  with torch.inference_mode():
    out = model(z, torch.tensor([10., 990.]), labels, return_dict=False)[0]
  assert out.shape == z.shape


def test_param_count_matches_ours():
  config = common.small_config()
  ours = models.num_params(models.create_model(config), config)
  peer = peer_diffusers.num_params(_build(config))
  assert abs(peer - ours) <= 0.05 * ours, (peer, ours)


def test_measure_times_sampling_and_training_with_bfloat16_autocast():
  config = common.small_config()
  spec = common.peer_spec(config, sampling_batches=[2], train_batch=2, repeats=1) | {
      "dtype": "bfloat16", "device": "cpu"}
  out = peer_diffusers.measure(spec)
  assert (out["device"], out["device_name"], out["dtype"]) == ("cpu", "cpu", "bfloat16")
  assert out["num_params"] == peer_diffusers.num_params(_build(config))
  assert out["sampling"]["2"]["unguided"] > 0 and out["sampling"]["2"]["guided"] > 0
  assert out["training"]["images_per_sec"] == 2 / out["training"]["seconds_per_step"]
  with pytest.raises(ValueError, match="dtype must be"):
    peer_diffusers.measure(spec | {"dtype": "float16"})
  if not torch.cuda.is_available():  # the accelerator benchmark asks for the GPU
    assert peer_diffusers.measure(spec | {"device": "cuda"}) == {
        "skipped": "torch sees no CUDA GPU here"}

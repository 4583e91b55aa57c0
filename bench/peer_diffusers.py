"""The PyTorch peer of our benchmark: diffusers' `UNet2DModel` shaped as our ADM UNet.

    model = build_unet(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,),
                       num_head_channels=32, image_size=32, channels=1, num_classes=10,
                       dropout=0.1, resblock_updown=True)
    sampling_step_seconds(model, 16, guided=True, repeats=5, image_size=32, channels=1,
                          num_classes=10)
    python -m bench.peer_diffusers '<spec as JSON>'   # `measure(spec)`, printed as PEER_JSON

It times the same work as cfg_jax: one classifier-free guided reverse step (one forward
on the doubled batch [z; z] with labels [c; ∅], then the stochastic step of
cfg_jax/sampling.py) and one training step (Algorithm 1, clipping, AdamW, EMA), on the CPU
or a CUDA GPU, in float32 or with bfloat16 autocast (float32 parameters, optimizer and loss).
Importing this module calls `torch.set_num_threads(os.cpu_count())`. It never imports jax,
so the command line can run it on a GPU before a jax process takes the GPU's memory.

`build_unet` matches our UNet block for block and parameter for parameter (resblock
up/downsampling, AdaGN "scale_shift", 1000 t(λ) sinusoidal embedding + MLP, class table of
num_classes + 1 rows, res-attn-res middle). What diffusers does not let us match:
  - GroupNorm: one group count for every norm, min(32, ch // 4) (4 for mnist); ours takes
    min(32, C // 4) per layer (4/8/12/16 groups at 16/32/48/64 channels). Equal at ch >= 128.
  - Layout NCHW (ours NHWC); bfloat16 by autocast (ours by the compute `dtype`).
  - q, k, v are three Linear layers (ours one fused Dense: same parameters and FLOPs);
    attention through `F.scaled_dot_product_attention`.
  - The network takes the timestep 1000 t(λ), computed outside it (ours maps λ to t inside).
  - Init: PyTorch defaults; ours zero-inits each block's last conv, the attention output
    and the output conv (irrelevant to speed).
  - The train step skips ours' learning-rate warmup, EMA-decay warmup and non-finite guard.
"""
import contextlib
import json
import math
import os
import sys
import time

import diffusers
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

torch.set_num_threads(os.cpu_count())

LOGSNR_MIN, LOGSNR_MAX = -20., 20.
TIME_SCALE = 1000.   # as cfg_jax.models.layers.TIME_SCALE
NUM_STEPS = 128      # the sampling schedule the timed step is taken from (configs/mnist.py)
STEP = NUM_STEPS // 2
V = 0.3              # reverse-variance interpolation (configs/mnist.py)
W = 2.               # guidance weight: ε̃ = (1 + w) ε(z, c) - w ε(z, ∅)
EMA_DECAY = 0.999


def build_unet(*, ch, ch_mult, num_res_blocks, attn_resolutions, num_head_channels,
               image_size, channels, num_classes, dropout, resblock_updown) -> torch.nn.Module:
  """diffusers' UNet2DModel with the architecture of our UNet for these config fields."""
  if num_head_channels == -1:
    raise ValueError("num_head_channels=-1 (a fixed head count) has no diffusers equivalent.")
  attn = [image_size // 2 ** level in attn_resolutions for level in range(len(ch_mult))]
  plain_down = "ResnetDownsampleBlock2D" if resblock_updown else "DownBlock2D"
  plain_up = "ResnetUpsampleBlock2D" if resblock_updown else "UpBlock2D"
  groups = min(32, ch // 4)
  return UNet2DModel(
      sample_size=image_size, in_channels=channels, out_channels=channels,
      flip_sin_to_cos=True, freq_shift=0,  # ADM's [cos, sin] with frequencies 10^(-4 i/half)
      down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in attn),
      up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attn)),
      block_out_channels=tuple(m * ch for m in ch_mult), layers_per_block=num_res_blocks,
      downsample_type="resnet" if resblock_updown else "conv",
      upsample_type="resnet" if resblock_updown else "conv",
      dropout=dropout, attention_head_dim=num_head_channels,
      # Without attn_norm_num_groups the "scale_shift" middle attention has no GroupNorm.
      norm_num_groups=groups, attn_norm_num_groups=groups, norm_eps=1e-5,
      resnet_time_scale_shift="scale_shift", num_class_embeds=num_classes + 1)


def num_params(model: torch.nn.Module) -> int:
  """Number of parameters of model."""
  return sum(p.numel() for p in model.parameters())


def _logsnr(u: torch.Tensor) -> torch.Tensor:
  """The cosine schedule λ(u) = -2 log tan(a u + b) (cfg_jax.schedules), clipped to its range."""
  b = math.atan(math.exp(-0.5 * LOGSNR_MAX))
  a = math.atan(math.exp(-0.5 * LOGSNR_MIN)) - b
  return (-2. * torch.log(torch.tan(a * u + b))).clamp(LOGSNR_MIN, LOGSNR_MAX)


def _timestep(logsnr: torch.Tensor) -> torch.Tensor:
  """The network's time input 1000 t(λ) with t = arctan(e^{-λ/2}) / (π/2)."""
  return TIME_SCALE * torch.atan(torch.exp(-0.5 * logsnr)) / (math.pi / 2)


def default_device() -> str:
  return "cuda" if torch.cuda.is_available() else "cpu"


def _autocast(device: str, dtype: str):
  """bfloat16 autocast for dtype 'bfloat16' (matmuls and convolutions), else nothing."""
  if dtype == "bfloat16":
    return torch.autocast(device_type=device, dtype=torch.bfloat16)
  if dtype != "float32":
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}.")
  return contextlib.nullcontext()


def _best_seconds(fn, repeats: int, device: str = "cpu") -> float:
  """The fastest wall time of fn() over `repeats` calls, after 2 warm-up calls.

  As `bench.common.timed` times jax; on a GPU each call is timed until the GPU has finished it.
  """
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  for _ in range(2):
    fn()
  sync()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    sync()
    times.append(time.perf_counter() - start)
  return min(times)


def sampling_step_seconds(model: torch.nn.Module, batch_size: int, *, guided: bool,
                          repeats: int, image_size: int, channels: int, num_classes: int,
                          device: str = "cpu", dtype: str = "float32") -> float:
  """The fastest seconds of one stochastic reverse step z_λ → z_λ', eval mode, inference_mode.

  guided: one forward on [z; z] with labels [c; ∅] and ε̃ = (1 + w) ε_c - w ε_∅; else one
  forward on z with labels c. The step is step STEP of NUM_STEPS, as cfg_jax/sampling.py.
  model must be on `device`.
  """
  model.eval()
  u = torch.linspace(1., 0., NUM_STEPS, dtype=torch.float64)[STEP:STEP + 2]
  lt, ls = _logsnr(u).tolist()
  logsnrs = torch.tensor([lt, ls], dtype=torch.float64)
  log_a2_t, log_a2_s = (-F.softplus(-logsnrs)).tolist()   # log α²
  log_s2_t, log_s2_s = (-F.softplus(logsnrs)).tolist()    # log σ²
  alpha_t, sigma_t = math.exp(0.5 * log_a2_t), math.exp(0.5 * log_s2_t)
  d = lt - ls
  # cfg_jax.diffusion.posterior_mean and reverse_log_var.
  z_coef = math.exp(d + 0.5 * (log_a2_s - log_a2_t))
  x_coef = -math.expm1(d) * math.exp(0.5 * log_a2_s)
  log_1m = math.log(-math.expm1(d))
  std = math.exp(0.5 * ((1. - V) * (log_1m + log_s2_s) + V * (log_1m + log_s2_t)))

  z = torch.randn(batch_size, channels, image_size, image_size, device=device)
  labels = torch.randint(0, num_classes, (batch_size,), device=device)
  if guided:
    labels = torch.cat([labels, torch.full_like(labels, num_classes)])
  timestep = torch.full((labels.shape[0],), _timestep(torch.tensor(lt)).item(), device=device)

  def step():
    with torch.inference_mode():
      with _autocast(device, dtype):
        eps = model(torch.cat([z, z]) if guided else z, timestep, labels,
                    return_dict=False)[0].float()
      if guided:
        eps_c, eps_u = eps.chunk(2)
        eps = (1. + W) * eps_c - W * eps_u
      x = (z - sigma_t * eps) / alpha_t
      return z_coef * z + x_coef * x + std * torch.randn_like(z)

  return _best_seconds(step, repeats, device)


def train_step_seconds(model: torch.nn.Module, batch_size: int, *, repeats: int,
                       image_size: int, channels: int, num_classes: int,
                       p_uncond: float = 0.1, lr: float = 5e-4, device: str = "cpu",
                       dtype: str = "float32") -> float:
  """The fastest seconds of one training step in train mode (cfg_jax/train.py train_step).

  Labels → ∅ w.p. p_uncond, λ ~ p(λ), z = α x + σ ε, MSE to ε, backward, gradient norm
  clipped to 1, AdamW, EMA of the parameters. Updates model's parameters; model must be
  on `device`.
  """
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  ema = [p.detach().clone() for p in params]
  opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.)
  x = torch.rand(batch_size, channels, image_size, image_size, device=device) * 2. - 1.
  labels = torch.randint(0, num_classes, (batch_size,), device=device)

  def step():
    c = torch.where(torch.rand(batch_size, device=device) < p_uncond, num_classes, labels)
    logsnr = _logsnr(torch.rand(batch_size, device=device))
    alpha = torch.sigmoid(logsnr).sqrt().view(-1, 1, 1, 1)
    sigma = torch.sigmoid(-logsnr).sqrt().view(-1, 1, 1, 1)
    eps = torch.randn_like(x)
    with _autocast(device, dtype):
      out = model(alpha * x + sigma * eps, _timestep(logsnr), c, return_dict=False)[0]
    loss = F.mse_loss(out.float(), eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.)
    opt.step()
    with torch.no_grad():
      for e, p in zip(ema, params):
        e.lerp_(p, 1. - EMA_DECAY)

  return _best_seconds(step, repeats, device)


def _out_of_memory(what: str, batch_size: int) -> dict:
  torch.cuda.empty_cache()
  return {"skipped": f"{what} ran out of GPU memory at batch {batch_size}"}


def measure(spec: dict) -> dict:
  """Times the peer on the work that `spec` describes; the figures as a JSON-able dict.

  spec: "unet" (build_unet's arguments), "sampling_batches", "train_batch", "repeats",
  "dtype" ('float32' or 'bfloat16') and optionally "device" (default: CUDA if there is
  one). Sampling is timed per batch, unguided and guided; training at train_batch. A
  figure that runs out of GPU memory, or all of them where "device" is "cuda" and there
  is none, is {"skipped": why}.
  """
  device, dtype = spec.get("device") or default_device(), spec["dtype"]
  if device == "cuda" and not torch.cuda.is_available():
    return {"skipped": "torch sees no CUDA GPU here"}
  unet = spec["unet"]
  model = build_unet(**unet).to(device)
  data = dict(image_size=unet["image_size"], channels=unet["channels"],
              num_classes=unet["num_classes"], device=device, dtype=dtype)
  out = {"num_params": num_params(model), "device": device, "dtype": dtype,
         "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
         "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
         "sampling": {}}
  for b in spec["sampling_batches"]:
    try:
      out["sampling"][str(b)] = {
          mode: sampling_step_seconds(model, b, guided=guided, repeats=spec["repeats"], **data)
          for mode, guided in (("unguided", False), ("guided", True))}
    except torch.cuda.OutOfMemoryError:
      out["sampling"][str(b)] = _out_of_memory("sampling", b)
  b = spec["train_batch"]
  try:
    seconds = train_step_seconds(model, b, repeats=spec["repeats"], **data)
    out["training"] = {"seconds_per_step": seconds, "images_per_sec": b / seconds}
  except torch.cuda.OutOfMemoryError:
    out["training"] = _out_of_memory("training", b)
  return out


if __name__ == "__main__":
  print("PEER_JSON " + json.dumps(measure(json.loads(sys.argv[1]))), flush=True)

"""The full config schema: every field a run reads, with its default.

Presets in `configs/` start from `base_config()` and override what differs, so that a
field exists in every config and `--config.<group>.<field>=...` works for each of them.
"""
from __future__ import annotations

import importlib.util
import math

from etils import epath
import ml_collections

from cfg_jax import checks
from cfg_jax import data_sources
from cfg_jax import diffusion
from cfg_jax import ema
from cfg_jax import guidance
from cfg_jax import sampling
from cfg_jax import schedules

# The networks (built by models.factory) and the compute dtypes a config may name.
MODEL_NAMES = ("unet", "mlp", "classifier")
W_MODEL_NAMES = ("unet", "mlp")  # the ε-networks, which may take w (model.w_emb_ch > 0)
DTYPE_NAMES = ("float32", "bfloat16")
LR_SCHEDULES = ("constant", "cosine")
SIGMA_RELS = ((lambda x: isinstance(x, (tuple, list)) and len(x) > 0 and len(set(x)) == len(x)
               and all(checks.is_real(s) and 0 < s < ema.MAX_SIGMA_REL for s in x)),
              f"a non-empty tuple of distinct widths in (0, {ema.MAX_SIGMA_REL:.4f})")


def load_config_file(path: epath.PathLike, *, flag: str = "--config"
                     ) -> ml_collections.ConfigDict:
  """`get_config()` of a config file such as configs/mnist.py, passed as `flag`."""
  path = epath.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{flag}={path} does not exist.")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def preset(name: str) -> ml_collections.ConfigDict:
  """The preset configs/<name>.py (installed as cfg_jax.configs), e.g. preset("mnist")."""
  from cfg_jax import configs  # pylint: disable=g-import-not-at-top  (its files import this one)
  folder = epath.Path(configs.__file__).parent
  if not (folder / f"{name}.py").is_file():
    raise FileNotFoundError(f"There is no preset {name!r}; the presets are "
                            f"{sorted(p.stem for p in folder.glob('[!_]*.py'))}.")
  return load_config_file(folder / f"{name}.py")


def base_config() -> ml_collections.ConfigDict:
  """Defaults for every field; presets override. Groups: data, model, diffusion, training, sampling."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.source = "mnist5k"      # mnist5k | toy2d | a tfds name | folder:<path>
  data.image_size = 32         # images are resized (or padded, for 28x28 digits) to this size
  data.channels = 1
  data.num_classes = 10
  data.random_flip = False
  data.resize = False          # accept images of mixed sizes, center-cropping and resizing each
  data.tfds_data_dir = ""      # "" = tfds default
  data.tfds_split = "train"
  data.toy2d_num_examples = 100_000  # toy2d: fixed draws from the mixture, seeded by config.seed
  data.toy2d_radius = 1.5      # toy2d: component means evenly spaced on this circle
  data.toy2d_std = 0.1         # toy2d: isotropic std of each component

  config.model = model = ml_collections.ConfigDict()
  model.name = "unet"          # unet | mlp | classifier
  model.ch = 64
  model.num_res_blocks = 2
  model.ch_mult = (1, 2, 2)
  model.attn_resolutions = (16,)
  model.num_heads = 4          # used when num_head_channels == -1
  model.num_head_channels = -1
  model.dropout = 0.1
  model.resblock_updown = True
  model.skip_rescale = True    # scale residual sums by 1/sqrt(2)
  model.dtype = "float32"      # compute dtype; params stay float32
  model.remat = False          # recompute blocks in the backward pass: less memory, more compute
  model.logsnr_emb_ch = 0      # width of λ's sinusoidal embedding; 0 = ch (mlp: mlp_hidden)
  model.label_emb_std = 1.     # initial std of the class table (ADM's nn.Embedding: 1)
  model.w_emb_ch = 0           # width of the guidance weight w's embedding; 0 = no w input
  model.mlp_hidden = 256       # mlp only
  model.mlp_depth = 4          # mlp only

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.logsnr_min = -20.
  diffusion.logsnr_max = 20.
  diffusion.prediction = "eps"  # eps | x | v

  config.training = training = ml_collections.ConfigDict()
  training.num_steps = 20_000
  training.batch_size = 128    # global, over all devices and hosts
  training.p_uncond = 0.1
  training.learning_rate = 2e-4
  training.warmup_steps = 500
  training.lr_schedule = "constant"  # after warmup: constant | cosine (to 0 at num_steps)
  training.grad_clip_norm = 1.0
  training.weight_decay = 0.0
  training.adam_b1 = 0.9
  training.adam_b2 = 0.999
  training.adam_eps = 1e-8
  training.ema = "constant"    # the EMA sampled from (cfg_jax.ema): constant | power
  training.ema_decay = 0.9999  # constant: the decay from step 99,990 on; before, (1+t)/(10+t)
  training.ema_sigma_rels = (0.05, 0.10)  # power: widths σ_rel tracked (the first is sampled)
  training.ema_snapshot_every = 1000  # power: steps between snapshots (cfg_jax.posthoc_ema)
  training.checkpoint_every = 1000
  training.max_to_keep = 3
  training.log_every = 100
  training.sample_every = 2000
  training.nonfinite = "stop"  # NaN/inf loss or gradient: stop, or skip the step's update

  config.sampling = sampling = ml_collections.ConfigDict()
  # The sampler's options (sampling.OPTIONS), passed to sampling.make_sample_fn whole.
  sampling.v = 0.3
  sampling.num_steps = 256
  sampling.sampler = "stochastic"  # stochastic | ddim
  sampling.clip_x = True
  sampling.guidance = "cfg"    # the rule: cfg | rescale | apg | cfgpp | cfg_zero_star
  # Every rule's parameters; the chosen rule reads its own (cfg_jax.guidance).
  sampling.guidance_params = ml_collections.ConfigDict(dict(guidance.PARAM_DEFAULTS))
  sampling.w_schedule = "constant"  # w over the steps: constant | linear | cosine
  sampling.guidance_interval = ()  # (λ_lo, λ_hi): guide only there; () guides every step
  # The training loop's sample grids.
  sampling.w = (0., 0.5, 2.)
  sampling.num_per_class = 8   # grid columns
  sampling.grid_classes = 10   # grid rows: the first classes (ImageNet has 1000)
  return config


def _even_int(zero_means):
  return (lambda x: checks.is_int(x) and x >= 0 and x % 2 == 0), (f"0 ({zero_means}) or an "
                                                                   f"even int >= 2")


def _ints_tuple(*, allow_empty):
  check = lambda x: (isinstance(x, (tuple, list)) and (allow_empty or len(x) > 0)
                     and all(checks.is_int(v) and v >= 1 for v in x))
  return check, f"a {'' if allow_empty else 'non-empty '}tuple of ints >= 1"


# Every field of base_config(): (check, what is allowed).
RULES = {
    "seed": checks.int_at_least(0),
    "data.source": ((lambda x: isinstance(x, str) and bool(x)), "a non-empty string"),
    "data.image_size": checks.int_at_least(1),
    "data.channels": checks.one_of(1, 3),
    "data.num_classes": checks.int_at_least(1),
    "data.random_flip": checks.BOOL,
    "data.resize": checks.BOOL,
    "data.tfds_data_dir": ((lambda x: isinstance(x, str)), "a path string ('' for the default)"),
    "data.tfds_split": ((lambda x: isinstance(x, str) and bool(x)), "a tfds split such as 'train'"),
    "data.toy2d_num_examples": checks.int_at_least(1),
    "data.toy2d_radius": checks.POSITIVE,
    "data.toy2d_std": checks.POSITIVE,
    "model.name": checks.one_of(*MODEL_NAMES),
    "model.ch": checks.int_at_least(1),
    "model.num_res_blocks": checks.int_at_least(1),
    "model.ch_mult": _ints_tuple(allow_empty=False),
    "model.attn_resolutions": _ints_tuple(allow_empty=True),
    "model.num_heads": checks.int_at_least(1),
    "model.num_head_channels": ((lambda x: checks.is_int(x) and (x == -1 or x >= 1)),
                                "-1 (use num_heads) or an int >= 1"),
    "model.dropout": checks.real_in(0, 1, hi_open=True),
    "model.resblock_updown": checks.BOOL,
    "model.skip_rescale": checks.BOOL,
    "model.dtype": checks.one_of(*DTYPE_NAMES),
    "model.remat": checks.BOOL,
    "model.logsnr_emb_ch": _even_int("tied to ch"),
    "model.label_emb_std": checks.POSITIVE,
    "model.w_emb_ch": _even_int("no w input"),
    "model.mlp_hidden": checks.int_at_least(1),
    "model.mlp_depth": checks.int_at_least(1),
    "diffusion.logsnr_min": checks.real_in(-math.inf, math.inf, lo_open=True, hi_open=True),
    "diffusion.logsnr_max": checks.real_in(-math.inf, math.inf, lo_open=True, hi_open=True),
    "diffusion.prediction": checks.one_of(*diffusion.PREDICTIONS),
    "training.num_steps": checks.int_at_least(1),
    "training.batch_size": checks.int_at_least(1),
    "training.p_uncond": checks.real_in(0, 1),
    "training.learning_rate": checks.POSITIVE,
    "training.warmup_steps": checks.int_at_least(0),
    "training.lr_schedule": checks.one_of(*LR_SCHEDULES),
    "training.grad_clip_norm": checks.POSITIVE,
    "training.weight_decay": checks.NON_NEGATIVE,
    "training.adam_b1": checks.real_in(0, 1, hi_open=True),
    "training.adam_b2": checks.real_in(0, 1, hi_open=True),
    "training.adam_eps": checks.POSITIVE,
    "training.ema": checks.one_of(*ema.KINDS),
    "training.ema_decay": checks.real_in(0, 1),
    "training.ema_sigma_rels": SIGMA_RELS,
    "training.ema_snapshot_every": checks.int_at_least(1),
    "training.checkpoint_every": checks.int_at_least(1),
    "training.max_to_keep": checks.int_at_least(1),
    "training.log_every": checks.int_at_least(1),
    "training.sample_every": checks.int_at_least(1),
    "training.nonfinite": checks.one_of("stop", "skip"),
    **{f"sampling.{name}": rule for name, rule in sampling.OPTION_RULES.items()},
    **{f"sampling.guidance_params.{name}": rule
       for name, rule in guidance.PARAM_RULES.items()},
    "sampling.w": ((lambda x: isinstance(x, (tuple, list)) and len(x) > 0
                    and all(checks.is_real(v) for v in x)), "a non-empty tuple of finite numbers"),
    "sampling.num_per_class": checks.int_at_least(1),
    "sampling.grid_classes": checks.int_at_least(1),
}


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  """{"group.field": value} for every field of the config."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out |= flatten(value, f"{prefix}{key}.")
    else:
      out[f"{prefix}{key}"] = value
  return out


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1) -> None:
  """Raises ValueError naming the first bad field of `config` and what is allowed.

  Checks every field against RULES, that no field is unknown or missing, and the
  relations between fields (batch split over devices, image size against the UNet's
  downsampling, attention heads against channels, λ range, a w input only for ε-networks).
  """
  _check_fields(config, RULES, "base_config")
  _validate_relations(config, num_devices)


def _check_fields(config: ml_collections.ConfigDict, rules: dict, base: str) -> None:
  """ValueError unless `config` has exactly the fields of `rules`, each one allowed."""
  fields = flatten(config)
  unknown = sorted(set(fields) - set(rules))
  if unknown:
    raise ValueError(f"Unknown config field(s) {['config.' + k for k in unknown]}; the fields "
                     f"are those of cfg_jax.config_lib.{base}().")
  missing = sorted(set(rules) - set(fields))
  if missing:
    raise ValueError(f"Missing config field(s) {['config.' + k for k in missing]}; start presets "
                     f"from cfg_jax.config_lib.{base}().")
  for name in rules:
    check_field(name, fields[name], rules)


def check_field(name: str, value, rules: dict | None = None) -> None:
  """ValueError naming config.<name> and what `rules` (default RULES) allows, unless `value`
  passes."""
  checks.check(f"config.{name}", value, (rules or RULES)[name])


# The optimizer, checkpoint and log fields of `training` that a distillation phase takes
# from its own config; its teacher's data, model and diffusion fields stay.
DISTILL_TRAINING_FIELDS = ("batch_size", "learning_rate", "warmup_steps", "lr_schedule",
                           "grad_clip_norm", "weight_decay", "adam_b1", "adam_b2", "adam_eps",
                           "ema", "ema_decay", "ema_sigma_rels", "ema_snapshot_every",
                           "checkpoint_every", "max_to_keep", "log_every",
                           "sample_every", "nonfinite")


def distill_base_config() -> ml_collections.ConfigDict:
  """Defaults of a guided-distillation config (python -m cfg_jax.distill). Groups: distill
  (the student's w input and the two stages), training (DISTILL_TRAINING_FIELDS)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.distill = distill = ml_collections.ConfigDict()
  distill.w_min = 0.           # w ~ U[w_min, w_max] per example, in both stages
  distill.w_max = 4.
  distill.w_emb_ch = 64        # the student's model.w_emb_ch
  distill.start_steps = 64     # the stage-1 student's DDIM steps: stage 2's first teacher
  distill.target_steps = 4     # stage 2 halves start_steps down to this, one round a halving
  distill.stage1_steps = 10_000  # optimizer steps of stage 1
  distill.round_steps = 5_000    # optimizer steps of each round of stage 2
  defaults = base_config().training
  config.training = ml_collections.ConfigDict({k: defaults[k] for k in DISTILL_TRAINING_FIELDS})
  return config


DISTILL_RULES = {
    "seed": RULES["seed"],
    "distill.w_min": checks.real_in(-1, math.inf, hi_open=True),
    "distill.w_max": checks.real_in(-1, math.inf, hi_open=True),
    "distill.w_emb_ch": ((lambda x: checks.is_int(x) and x >= 2 and x % 2 == 0), "an even int >= 2"),
    "distill.start_steps": checks.int_at_least(1),
    "distill.target_steps": checks.int_at_least(1),
    "distill.stage1_steps": checks.int_at_least(1),
    "distill.round_steps": checks.int_at_least(1),
    **{f"training.{k}": RULES[f"training.{k}"] for k in DISTILL_TRAINING_FIELDS},
}


def validate_distill(config: ml_collections.ConfigDict, *, num_devices: int = 1) -> None:
  """Raises ValueError naming the first bad field of a distillation config: each field
  against DISTILL_RULES, a non-empty w range, start_steps a power-of-two multiple of
  target_steps, the batch split over the devices."""
  _check_fields(config, DISTILL_RULES, "distill_base_config")
  d = config.distill
  if not d.w_min < d.w_max:
    raise ValueError(f"config.distill.w_min={d.w_min} must be below config.distill.w_max="
                     f"{d.w_max}: w is drawn from [w_min, w_max].")
  ratio = d.start_steps // d.target_steps
  if d.start_steps % d.target_steps or ratio & (ratio - 1):
    raise ValueError(f"config.distill.start_steps={d.start_steps} must be config.distill."
                     f"target_steps={d.target_steps} times a power of two: each round of stage "
                     f"2 halves the steps.")
  if config.training.batch_size % num_devices:
    raise ValueError(f"config.training.batch_size={config.training.batch_size} must be divisible "
                     f"by the number of devices ({num_devices}).")


def validate_sampling(spec: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field of a run's config.sampling: each field
  against RULES, then the sampler's relations (a rule defined only for one sampler)."""
  for name, value in flatten(spec, "sampling.").items():
    if name not in RULES:
      raise ValueError(f"Unknown config field config.{name}; the fields are those of "
                       f"cfg_jax.config_lib.base_config().sampling.")
    check_field(name, value)
  sampling.check_options(prefix="config.sampling.", **sampling.spec_options(spec))


def example_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The shape of one example: (2,) for toy2d points, else (image_size, image_size, channels).

  Reads only `config.data`, so that models and samplers need no data pipeline.
  """
  data = config.data
  if data_sources.holds_points(data):
    return (2,)
  check_field("data.image_size", data.image_size)
  check_field("data.channels", data.channels)
  return (data.image_size, data.image_size, data.channels)


def _validate_relations(config: ml_collections.ConfigDict, num_devices: int) -> None:
  d, m = config.data, config.model
  validate_sampling(config.sampling)
  schedules.check_logsnr_range(config.diffusion.logsnr_min, config.diffusion.logsnr_max,
                               prefix="config.diffusion.")
  if config.training.batch_size % num_devices:
    raise ValueError(f"config.training.batch_size={config.training.batch_size} must be divisible "
                     f"by the number of devices ({num_devices}).")
  t = config.training
  if t.lr_schedule == "cosine" and t.warmup_steps >= t.num_steps:
    raise ValueError(f"config.training.warmup_steps={t.warmup_steps} must be below "
                     f"config.training.num_steps={t.num_steps} with lr_schedule='cosine', "
                     f"which decays from the end of warmup to num_steps.")
  if m.w_emb_ch and m.name not in W_MODEL_NAMES:
    raise ValueError(f"config.model.w_emb_ch={m.w_emb_ch} must be 0 for config.model.name="
                     f"{m.name!r}: only the ε-networks {W_MODEL_NAMES} take the guidance weight w.")
  toy = data_sources.holds_points(d)
  if toy != (m.name == "mlp"):
    raise ValueError(f"config.model.name={m.name!r} does not fit config.data.source={d.source!r}:"
                     f" the 'mlp' model is for 'toy2d' points, 'unet'/'classifier' for images.")
  if toy:
    return
  factor = 2 ** (len(m.ch_mult) - 1)
  if d.image_size % factor:
    raise ValueError(f"config.data.image_size={d.image_size} must be divisible by {factor}, the "
                     f"UNet's downsampling for config.model.ch_mult={tuple(m.ch_mult)}.")
  resolutions = [d.image_size // 2**i for i in range(len(m.ch_mult))]
  for res in m.attn_resolutions:
    if res not in resolutions:
      raise ValueError(f"config.model.attn_resolutions has {res}, which is not one of the UNet's "
                       f"resolutions {resolutions} for image_size={d.image_size}.")
  for res in set(m.attn_resolutions) | {resolutions[-1]}:  # the middle block always attends
    ch = m.ch * m.ch_mult[resolutions.index(res)]
    if ch % (m.num_heads if m.num_head_channels == -1 else m.num_head_channels):
      raise ValueError(f"At resolution {res} the UNet has {ch} channels, which "
                       f"config.model.num_heads={m.num_heads} / num_head_channels="
                       f"{m.num_head_channels} does not split into whole heads.")

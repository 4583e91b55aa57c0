"""A run's config beside its checkpoints: config.json, written by the trainer and read by
generate, evaluate and distill, and the migration of older runs' files.

Fields added after runs were first written get the value that means what those runs did
(`ADDED_FIELDS`); a guidance rule's parameters that a run predates get their defaults.
"""
from __future__ import annotations

import json

from etils import epath
import jax
import ml_collections

from cfg_jax import files
from cfg_jax import guidance

# Fields added after runs were first written, with the value that means what a run written
# without the field did: `load_config` fills them into an older run's config.json and
# `check_signature` into an older checkpoint's signature. label_emb_std only sets how a
# table starts, which a restored run never repeats.
ADDED_FIELDS = {"model.logsnr_emb_ch": 0, "model.label_emb_std": 1., "model.w_emb_ch": 0,
                "training.lr_schedule": "constant", "sampling.guidance_interval": (),
                "sampling.guidance": "cfg", "sampling.w_schedule": "constant",
                "training.ema": "constant", "training.ema_sigma_rels": (0.05, 0.10),
                "training.ema_snapshot_every": 1000}


CONFIG_FILE = "config.json"


def save_config(workdir: epath.PathLike, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config beside its checkpoints (process 0 only), for generate/evaluate."""
  if jax.process_index() == 0:
    path = epath.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(path, config.to_json(indent=2))


def load_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with, with the ADDED_FIELDS it predates and
  the guidance rules' parameters it lacks (their defaults)."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"--workdir={workdir} holds no {CONFIG_FILE}: it is not a cfg_jax "
                            f"training run (python -m cfg_jax.train writes one).")
  # JSON turns the config's tuples into lists, which config_lib.validate accepts alike.
  fields = json.loads(path.read_text())
  for name, value in ADDED_FIELDS.items():
    group, field = name.split(".")
    fields.get(group, {}).setdefault(field, value)
  if "sampling" in fields:
    sampling = fields["sampling"]
    sampling["guidance_params"] = guidance.PARAM_DEFAULTS | sampling.get("guidance_params", {})
  return ml_collections.ConfigDict(fields)

"""A run's config.json: written by the trainer, read back with the fields older runs lack."""
import json

from cfg_jax import config_files
from cfg_jax import guidance
from cfg_jax import runs
from cfg_jax import test_configs
from cfg_jax import train


def test_a_run_written_before_fields_existed_loads_with_their_old_values(tmp_path):
  train.train(test_configs.toy2d(num_steps=2), str(tmp_path))
  path = tmp_path / config_files.CONFIG_FILE
  fields = json.loads(path.read_text())
  for name in config_files.ADDED_FIELDS:
    group, field = name.split(".")
    del fields[group][field]
  del fields["sampling"]["guidance_params"]  # a run from before the guidance rules
  path.write_text(json.dumps(fields))
  config = config_files.load_config(tmp_path)
  assert {name: config[name.split(".")[0]][name.split(".")[1]]
          for name in config_files.ADDED_FIELDS} == config_files.ADDED_FIELDS
  assert config.sampling.guidance_params.to_dict() == guidance.PARAM_DEFAULTS
  run = runs.load_run(tmp_path)  # validates the config and checks the signature
  assert run.step == 2 and tuple(run.config.sampling.guidance_interval) == ()
  # A run written before a rule's parameter existed gets its default.
  fields["sampling"]["guidance_params"] = {"phi": 0.3}
  path.write_text(json.dumps(fields))
  assert config_files.load_config(tmp_path).sampling.guidance_params.to_dict() == (
      guidance.PARAM_DEFAULTS | {"phi": 0.3})

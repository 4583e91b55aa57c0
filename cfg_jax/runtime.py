"""Process set-up shared by the command-line tools: hosts, compilation cache, logs."""
from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
from typing import Iterator

from absl import logging
import jax

from cfg_jax import extras

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "cfg_jax", "xla")


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize() when this process is one of several hosts.

  Several hosts: SLURM with more than one task, a TPU pod slice on GKE
  (TPU_WORKER_HOSTNAMES lists more than one worker), CFG_JAX_DISTRIBUTED=1 (set by
  launch/tpu_vm.py: gcloud TPU VMs describe the slice in their metadata, not in the
  environment), or an explicit JAX_COORDINATOR_ADDRESS. jax reads the rest of the
  cluster description from the same environment or metadata; where nothing provides it
  (a hand-made cluster, the loopback test), JAX_NUM_PROCESSES and JAX_PROCESS_ID do.
  """
  env = os.environ
  if ("JAX_COORDINATOR_ADDRESS" in env or int(env.get("SLURM_NTASKS", "1")) > 1
      or "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("CFG_JAX_DISTRIBUTED") == "1"):
    count, index = env.get("JAX_NUM_PROCESSES"), env.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=None if count is None else int(count),
                               process_id=None if index is None else int(index))


def enable_compilation_cache() -> None:
  """jax's persistent compilation cache, so a rerun (e.g. a resume) skips XLA compiles.

  JAX_COMPILATION_CACHE_DIR chooses the folder (default ~/.cache/cfg_jax/xla).
  """
  jax.config.update("jax_compilation_cache_dir",
                    os.environ.get("JAX_COMPILATION_CACHE_DIR", DEFAULT_CACHE_DIR))


class _QuietLibraries(std_logging.Filter):
  """Drops orbax's INFO lines, which name every file of every save."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())


@contextlib.contextmanager
def one_line_errors(program: str) -> Iterator[None]:
  """Ends the program with one clear line, not a traceback, on a user-facing error.

  Bad inputs raise ValueError/FileNotFoundError naming the field; a failed checkpoint
  write or a diverged run raise their own OSError/RuntimeError subclasses; a missing
  optional dependency names the pip command (extras.MissingExtraError). The traceback
  is logged at DEBUG level (`--verbosity=1`) for whoever debugs.
  """
  try:
    yield
  except (ValueError, OSError, RuntimeError, extras.MissingExtraError) as e:
    logging.debug("Traceback of the error below:", exc_info=True)
    print(f"{program}: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def set_up_process() -> None:
  """Everything a CLI does before its work: hosts, compilation cache, quiet logs."""
  maybe_initialize_distributed()
  enable_compilation_cache()
  quiet_library_logs()

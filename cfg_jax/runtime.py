"""Process set-up shared by the command-line tools: hosts, compilation cache, logs."""
from __future__ import annotations

import contextlib
import difflib
import glob
import logging as std_logging
import os
import re
import sys
import urllib.request
from typing import Iterable, Iterator, Sequence

from absl import logging
import jax

from cfg_jax import extras

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "cfg_jax", "xla")


# TPU chips appear as /dev/accel<n> (TPU v4 and older) or as VFIO groups /dev/vfio/<n> (v5e
# and newer); the VM's metadata server describes the slice.
TPU_DEVICE_FILES = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
GCE_METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/"
METADATA_TIMEOUT_S = 5.


def cloud_tpu_workers() -> int:
  """The number of workers (hosts) of the Cloud TPU slice this VM belongs to, else 1.

  Only a host with TPU device files asks its GCE metadata server, once, for the slice's
  `worker-network-endpoints` (one comma-separated entry per worker). No device file, no
  metadata server, a timeout or a reply without the `Metadata-Flavor: Google` header
  all mean one worker.
  """
  if not any(glob.glob(pattern) for pattern in TPU_DEVICE_FILES):
    return 1
  request = urllib.request.Request(GCE_METADATA_URL + "worker-network-endpoints",
                                   headers={"Metadata-Flavor": "Google"})
  no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server
  try:
    with no_proxy.open(request, timeout=METADATA_TIMEOUT_S) as response:
      if response.headers.get("Metadata-Flavor") != "Google":
        return 1
      endpoints = response.read().decode()
  except (OSError, ValueError) as e:  # URLError, HTTPError and timeouts are OSErrors
    logging.info("No Cloud TPU metadata (%s): one host.", e)
    return 1
  return max(len([entry for entry in endpoints.split(",") if entry.strip()]), 1)


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize() when this process is one of several hosts.

  Several hosts: SLURM with more than one task, a TPU pod slice on GKE
  (TPU_WORKER_HOSTNAMES lists more than one worker), CFG_JAX_DISTRIBUTED=1, an explicit
  JAX_COORDINATOR_ADDRESS, or else a Cloud TPU VM whose slice has several workers
  (`cloud_tpu_workers`, so that the same command works on every worker of a pod slice
  with nothing set). jax reads the rest of the cluster description from the same
  environment or metadata; where nothing provides it (a hand-made cluster, the loopback
  test), JAX_NUM_PROCESSES and JAX_PROCESS_ID do. Once initialized, jax's preemption
  sync point makes every host save the same step on SIGTERM (cfg_jax.train).
  """
  env = os.environ
  if ("JAX_COORDINATOR_ADDRESS" in env or int(env.get("SLURM_NTASKS", "1")) > 1
      or "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("CFG_JAX_DISTRIBUTED") == "1"
      or cloud_tpu_workers() > 1):
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


def refuse_unknown_overrides(program: str, flag: str, fields: Iterable[str], *, schema: str,
                             argv: Sequence[str] | None = None) -> None:
  """Ends the program with one line if the command line overrides a field that `fields`
  (the dotted names under --<flag>, those of `schema`) lacks: `--<flag>.<field>=...`.
  Called before absl parses the flags, which would end in ml_collections' traceback."""
  fields = set(fields)
  for arg in (sys.argv if argv is None else argv)[1:]:
    match = re.fullmatch(rf"--(?:no)?{re.escape(flag)}\.([\w.]+)(=.*)?", arg, re.DOTALL)
    if match and match.group(1) not in fields:
      parent, _, name = match.group(1).rpartition(".")
      siblings = [f.rpartition(".")[2] for f in fields if f.rpartition(".")[0] == parent]
      close = difflib.get_close_matches(name, siblings, n=1)
      hint = f' Did you mean "{close[0]}"?' if close else ""
      print(f"{program}: error: --{flag}.{match.group(1)} is not a config field; the fields "
            f"are those of {schema}.{hint}", file=sys.stderr, flush=True)
      sys.exit(1)


def set_up_process() -> None:
  """Everything a CLI does before its work: hosts, compilation cache, quiet logs."""
  maybe_initialize_distributed()
  enable_compilation_cache()
  quiet_library_logs()

r"""One process of tests/multihost_test.py: trains a small toy2d run and dumps what it saw.

    python tests/multihost_worker.py WORKDIR OUT.npz PROGRESS

Several processes when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
are set: `runtime.set_up_process()` initializes jax.distributed from them, as on a
cluster. The worker trains to RESUME_AT steps, then to NUM_STEPS in a second
`train` (a resume from the checkpoint), then restores the EMA params as
`cfg_jax.generate` does. Last it starts an endless run in WORKDIR_preempted, writing each
step it reaches to the file PROGRESS, until the test sends SIGTERM (to one process of
the job). OUT.npz holds, for this process:
  indices/labels/x     the dataset rows it read, one row of the array per step;
  params/*, ema/*      its copy of the final parameters, in memory at the last save;
  restored_ema/*       the EMA params `runs.load_run` restored from the checkpoint;
  writes               the files under WORKDIR it wrote through epath (the metadata;
                       array data goes through tensorstore and is not listed), each
                       under its final name (files are written to a temporary name and
                       renamed), but for the workdir's lock;
  locked               whether it wrote the lock (the lock's heartbeat rewrites depend
                       on timing, so they are not among the writes);
  preempted_exit_code, preempted_saved_steps
                       what the endless run returned and the steps it saved.

The data and model are configs/toy2d.py, shrunk: the MNIST UNet compiles for minutes
per process on two shared cores, and every process compiles each program twice.
"""
import pathlib
import re
import sys

from etils import epath
import jax
import numpy as np

from cfg_jax import checkpointing
from cfg_jax import files
from cfg_jax import data_sources
from cfg_jax import runs
from cfg_jax import runtime
from cfg_jax import test_configs
from cfg_jax import train
from cfg_jax import workdir_lock

RESUME_AT, NUM_STEPS = 2, 3


def _spy(cls, name, record):
  """Makes `cls.name(self, *args)` call `record(self, *args)` first."""
  method = getattr(cls, name)

  def wrapper(self, *args, **kwargs):
    record(self, *args, **kwargs)
    return method(self, *args, **kwargs)

  setattr(cls, name, wrapper)


def _local_copy(tree):
  """This process's copy of replicated arrays: the data on its first device."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)


def _flat(prefix, tree):
  return {prefix + jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _record_rows(rows):
  """Wraps data_sources.open_source so that the dataset's reader logs the rows it reads."""
  open_source = data_sources.open_source

  def open_spying(config, shape):
    read, size = open_source(config, shape)

    def spying_read(indices):
      x, labels = read(indices)
      rows.append((np.array(indices), np.array(labels), np.array(x)))
      return x, labels

    return spying_read, size

  data_sources.open_source = open_spying


def _run_until_preempted(config, workdir: str, progress: pathlib.Path) -> tuple[int, list[int]]:
  """Trains "forever", reporting each step to `progress`: (exit code, steps saved)."""
  saved = []
  _spy(checkpointing.Checkpointer, "save", lambda self, step, state, meta: saved.append(step))
  report = lambda self, step: progress.write_text(str(step))
  _spy(train.Preemption, "reached", report)
  config.training.update(num_steps=10**6, checkpoint_every=10**6, log_every=10**6)
  return train.train(config, workdir + "_preempted"), saved


def main(workdir: str, out: str, progress: str) -> None:
  runtime.set_up_process()
  workdir = epath.Path(workdir)
  rows, writes, locks, final = [], [], [], {}
  _record_rows(rows)

  def record_write(path, *args, **kwargs):
    if str(path).startswith(f"{workdir}/"):
      name = re.sub(rf"{re.escape(files.TMP_MARK)}[0-9a-f]{{16}}$", "",
                    str(path)[len(str(workdir)) + 1:])
      (locks if name == workdir_lock.LOCK_FILE else writes).append(name)

  for method in ("write_text", "write_bytes"):
    _spy(type(workdir), method, record_write)
  _spy(checkpointing.Checkpointer, "save", lambda self, step, state, meta: final.update(
      step=step, params=_local_copy(state.params), ema=_local_copy(state.ema_params)))

  config = test_configs.small_toy2d_preset()
  for num_steps in (RESUME_AT, NUM_STEPS):
    config.training.num_steps = num_steps
    assert train.train(config, str(workdir)) == 0
  restored = runs.load_run(workdir)
  assert final["step"] == restored.step == NUM_STEPS, (final["step"], restored.step)

  indices, labels, x = (np.stack(a) for a in zip(*rows))
  dump = dict(indices=indices, labels=labels, x=x, writes=np.array(sorted(writes), str),
              locked=bool(locks),
              process_index=jax.process_index(), process_count=jax.process_count(),
              device_count=jax.device_count(),
              **_flat("params", final["params"]), **_flat("ema", final["ema"]),
              **_flat("restored_ema", _local_copy(restored.params)))
  exit_code, saved = _run_until_preempted(config, str(workdir), pathlib.Path(progress))
  np.savez(out, preempted_exit_code=exit_code, preempted_saved_steps=np.array(saved, int), **dump)


if __name__ == "__main__":
  main(*sys.argv[1:])

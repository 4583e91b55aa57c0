"""The multi-host path for real: two processes on 127.0.0.1 joined by jax.distributed.

tests/multihost_worker.py runs three times at once: as processes 0 and 1 of one job
(CPU collectives through gloo, 2 simulated devices each) and alone with 4 devices. Each
trains the same run for a few steps, resumes it from its checkpoint and restores it
for sampling, then trains without end until this test sends SIGTERM (to process 1 only,
in the job), then dumps what it read, computed and wrote; the tests compare the dumps.
"""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
DEADLINE_SECS = 420  # every wait inside jax is bounded too; this bounds the whole job
PREEMPT_AFTER = 5  # steps of the endless run each process reaches before the SIGTERM
# Variables through which a CI machine's own cluster would reach jax or cfg_jax.runtime.
_CLUSTER_PREFIXES = ("SLURM_", "OMPI_", "PMI_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR",
                     "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS",
                     "CFG_JAX_DISTRIBUTED", "KUBERNETES_")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(_CLUSTER_PREFIXES) and "_proxy" not in k.lower()}
  return env | {"JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"} | extra


def _step(progress: pathlib.Path) -> int:
  try:
    return int(progress.read_text() or -1)
  except (FileNotFoundError, ValueError):  # not yet written, or caught mid-write
    return -1


def _run_all(jobs: dict[str, tuple[list[str], dict[str, str]]], logs: pathlib.Path,
             preempt: dict[str, list[str]]) -> None:
  """Runs the commands at once; fails, after killing the rest, if one fails or all overrun.

  `preempt` maps a process to signal to the processes whose progress it waits for: once
  each has reached PREEMPT_AFTER steps of the endless run, it gets SIGTERM. A process of
  a distributed job whose peer died may wait for it: once any process fails, the others
  are killed rather than awaited.
  """
  procs = {}
  for name, (cmd, env) in jobs.items():
    with open(logs / f"{name}.log", "w") as log:
      procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + DEADLINE_SECS
  problem = None
  while problem is None and any(p.poll() is None for p in procs.values()):
    failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
    if failed:
      problem = f"{failed[0]} failed"
    elif time.monotonic() > deadline:
      problem = f"the processes overran {DEADLINE_SECS} s"
    for name, waits_for in list(preempt.items()):
      if all(_step(logs / f"{n}.progress") >= PREEMPT_AFTER for n in waits_for):
        procs[name].send_signal(signal.SIGTERM)
        del preempt[name]
    time.sleep(0.5)
  for p in procs.values():
    if p.poll() is None:
      p.kill()
    p.wait()
  failed = [n for n, p in procs.items() if p.returncode]
  if problem or failed:
    logs_tails = "\n".join(f"--- {n} (exit {p.returncode}):\n"
                           + (logs / f"{n}.log").read_text()[-3000:] for n, p in procs.items())
    pytest.fail(f"{problem or failed[0] + ' failed'}.\n{logs_tails}")


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
  """{"p0", "p1", "single"}: the worker's dump from each process, plus their workdirs."""
  tmp = tmp_path_factory.mktemp("multihost")
  coordinator = f"127.0.0.1:{_free_port()}"
  args = lambda name, workdir: [sys.executable, str(WORKER), str(tmp / workdir),
                                str(tmp / f"{name}.npz"), str(tmp / f"{name}.progress")]
  jobs = {"single": (args("single", "single"), _env(4))}
  for i in range(2):
    # Each process compiles for itself: with a shared persistent compilation cache one
    # would load in seconds what the other compiles for longer, and gloo gives a peer
    # only 30 s to reach the first collective.
    jobs[f"p{i}"] = (args(f"p{i}", "job"),
                     _env(2, JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2",
                          JAX_PROCESS_ID=str(i), JAX_LOCAL_DEVICE_IDS="0,1",
                          JAX_COMPILATION_CACHE_DIR=str(tmp / f"xla_cache_p{i}")))
  _run_all(jobs, tmp, preempt={"single": ["single"], "p1": ["p0", "p1"]})
  out = {name: dict(np.load(tmp / f"{name}.npz")) for name in jobs}
  out["workdirs"] = {"job": tmp / "job", "single": tmp / "single"}
  return out


def _arrays(dump, prefix):
  return {k[len(prefix):]: v for k, v in dump.items() if k.startswith(prefix + "[")}


def test_two_processes_form_one_job_of_four_devices(dumps):
  for i in range(2):
    assert (dumps[f"p{i}"]["process_index"], dumps[f"p{i}"]["process_count"]) == (i, 2)
  assert (dumps["single"]["process_index"], dumps["single"]["process_count"]) == (0, 1)
  assert all(dumps[n]["device_count"] == 4 for n in ("p0", "p1", "single"))


def test_each_process_reads_its_half_of_every_global_batch(dumps):
  p0, p1, single = dumps["p0"], dumps["p1"], dumps["single"]
  for step in range(len(single["indices"])):
    assert not set(p0["indices"][step]) & set(p1["indices"][step])
  for key in ("indices", "labels", "x"):
    np.testing.assert_array_equal(np.concatenate([p0[key], p1[key]], axis=1), single[key])


def test_both_processes_hold_identical_parameters(dumps):
  for prefix in ("params", "ema", "restored_ema"):
    p0, p1 = _arrays(dumps["p0"], prefix), _arrays(dumps["p1"], prefix)
    assert p0 and p0.keys() == p1.keys()
    for name in p0:
      np.testing.assert_array_equal(p0[name], p1[name], err_msg=prefix + name)


def test_two_processes_compute_what_one_process_with_four_devices_computes(dumps):
  for prefix in ("params", "ema"):
    job, single = _arrays(dumps["p0"], prefix), _arrays(dumps["single"], prefix)
    assert job.keys() == single.keys()
    for name in job:
      np.testing.assert_allclose(job[name], single[name], rtol=1e-5, atol=1e-6,
                                 err_msg=prefix + name)


def test_checkpoints_are_written_once_and_restored_by_both_processes(dumps):
  for i in range(2):
    ema, restored = _arrays(dumps[f"p{i}"], "ema"), _arrays(dumps[f"p{i}"], "restored_ema")
    for name in ema:
      np.testing.assert_array_equal(restored[name], ema[name])
  # Process 0 writes exactly the metadata a single process writes; process 1 only the
  # index of the array chunks it wrote.
  np.testing.assert_array_equal(dumps["p0"]["writes"], dumps["single"]["writes"])
  assert "config.json" in dumps["p0"]["writes"]
  assert any(w.endswith("/_CHECKPOINT_METADATA") for w in dumps["p0"]["writes"])
  assert len(dumps["p1"]["writes"]) and all(
      w.endswith("/array_metadatas/process_1") for w in dumps["p1"]["writes"])
  # Process 0 alone holds the workdir's lock for the job.
  assert dumps["p0"]["locked"] and dumps["single"]["locked"] and not dumps["p1"]["locked"]
  names = lambda folder: sorted(p.name for p in folder.iterdir())
  job, single = dumps["workdirs"]["job"], dumps["workdirs"]["single"]
  assert names(job / "checkpoints") == names(single / "checkpoints") == ["1", "2", "3"]
  assert names(job / "samples") == names(single / "samples")


def test_sigterm_to_one_host_saves_one_agreed_step_on_every_host(dumps):
  saved = {n: dumps[n]["preempted_saved_steps"].tolist() for n in ("p0", "p1", "single")}
  for name, steps in saved.items():
    assert dumps[name]["preempted_exit_code"] == 75, name
    assert len(steps) == 1 and steps[0] >= PREEMPT_AFTER, (name, steps)
  # Process 0 got no signal, yet saved the step at which process 1 stopped.
  assert saved["p0"] == saved["p1"]
  checkpoints = dumps["workdirs"]["job"].parent / "job_preempted" / "checkpoints"
  assert sorted(p.name for p in checkpoints.iterdir()) == [str(saved["p0"][0])]

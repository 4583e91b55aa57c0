"""The launchers: launch/tpu_vm.py's commands, launch/slurm.sbatch, and how runtime reads them.

No cloud and no cluster: gcloud, srun, scontrol, a worker's python3 and uv are small fakes
that record how they were called, the commands meant for a TPU worker run on this machine
in a fake home folder, and a TPU VM's metadata server is a local HTTP server.
"""
import http.server
import os
import pathlib
import shlex
import socket
import stat
import subprocess
import sys
import tarfile
import threading

import jax
import pytest

from cfg_jax import runtime

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU_VM = ROOT / "launch" / "tpu_vm.py"
SLURM = ROOT / "launch" / "slurm.sbatch"
VM = ["--name=cfg-v4-32", "--zone=us-central2-b"]
TRAIN = ["train", "--config=configs/mnist.py", "--workdir=gs://my-bucket/cfg_jax/mnist", "--",
         "--config.training.batch_size=512", "--config.sampling.w=(0.,3.)"]


def _fake(bin_dir: pathlib.Path, name: str, script: str) -> None:
  """An executable `name` in bin_dir: appends its arguments, one per line, to <name>.calls."""
  bin_dir.mkdir(parents=True, exist_ok=True)
  path = bin_dir / name
  path.write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> "{bin_dir}/{name}.calls"\n{script}\n')
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _calls(bin_dir: pathlib.Path, name: str) -> list[str]:
  path = bin_dir / f"{name}.calls"
  return path.read_text().splitlines() if path.exists() else []


def _tpu_vm(*args, bin_dir, env=None, check=True):
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})}
  step, *rest = args
  result = subprocess.run([sys.executable, str(TPU_VM), step, *VM, *rest], env=env, text=True,
                          capture_output=True, timeout=120)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _command_option(line: str) -> str:
  """The --command=... that a printed `gcloud ... ssh` line runs on the workers."""
  return next(a[len("--command="):] for a in shlex.split(line) if a.startswith("--command="))


def test_dry_run_prints_create_train_delete_and_runs_nothing(tmp_path):
  _fake(tmp_path, "gcloud", "exit 1")
  out = lambda step, *rest: _tpu_vm(step, "--dry_run", *rest, bin_dir=tmp_path).stdout.splitlines()
  assert out("create", "--accelerator_type=v4-32", "--spot") == [
      "gcloud compute tpus tpu-vm create cfg-v4-32 --accelerator-type=v4-32 "
      "--version=tpu-ubuntu2204-base --spot --zone=us-central2-b"]
  assert out("delete") == ["gcloud compute tpus tpu-vm delete cfg-v4-32 --quiet "
                           "--zone=us-central2-b"]
  [train] = out(*TRAIN)
  assert shlex.split(train)[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "cfg-v4-32",
                                   "--worker=all"]
  assert _calls(tmp_path, "gcloud") == []


@pytest.mark.parametrize("flags,python", [([], "3.12"), (["--python=3.13"], "3.13")])
def test_install_makes_a_python_environment_of_that_version_on_each_worker(
    tmp_path, flags, python):
  """Runs the remote part of `install` in a fake worker home folder, whose python3 is the
  runtime image's old Python and whose uv records what it is asked."""
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  home.mkdir()
  with tarfile.open(home / "cfg_jax-src.tar.gz", "w:gz") as tar:
    tar.add(ROOT / "setup.cfg", arcname="./setup.cfg")
  _fake(bin_dir, "python3", f'mkdir -p ~/.local/bin && cp "{bin_dir}/uv" ~/.local/bin/uv')
  _fake(bin_dir, "uv", "exit 0")  # copied to ~/.local/bin by `pip install --user uv`
  [*_, install] = _tpu_vm("install", "--dry_run", *flags, bin_dir=bin_dir).stdout.splitlines()
  assert shlex.split(install)[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "cfg-v4-32",
                                     "--worker=all"]
  env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  subprocess.run(["bash", "-c", _command_option(install)], env=env, check=True, timeout=60)
  assert _calls(bin_dir, "python3") == ["-m pip install --quiet --user uv==0.13.9"]
  assert _calls(bin_dir, "uv") == [
      f"venv --quiet --clear --python {python} {home}/cfg_jax_env",
      f"pip install --quiet --python {home}/cfg_jax_env/bin/python -e {home}/cfg_jax[gcs] "
      f"jax[tpu]>=0.10.2"]
  assert (home / "cfg_jax" / "setup.cfg").read_text() == (ROOT / "setup.cfg").read_text()


@pytest.mark.parametrize("python,error", [
    ("3.10", "--python=3.10 is too old: cfg_jax and jax need Python >= 3.11."),
    ("3", "--python=3 is not a Python version such as 3.12.")])
def test_install_and_run_refuse_a_python_older_than_3_11_in_one_line(tmp_path, python, error):
  _fake(tmp_path, "gcloud", "exit 0")
  for step in (["install"], ["run", *TRAIN[1:3]]):
    result = _tpu_vm(*step, f"--python={python}", bin_dir=tmp_path, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"tpu_vm.py: error: {error}\n"
  assert _calls(tmp_path, "gcloud") == []


def test_train_runs_detached_on_a_worker_and_logs_follow_it(tmp_path):
  """Runs the remote part of `train`, then of `logs`, in a fake worker home folder: the
  environment's Python runs training, with no variable set."""
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  (home / "cfg_jax").mkdir(parents=True)
  env_bin = home / "cfg_jax_env" / "bin"
  _fake(env_bin, "python", 'echo "CFG_JAX_DISTRIBUTED=${CFG_JAX_DISTRIBUTED-unset} in $PWD"; '
                           'sleep 1; echo "training done"')
  # A slow worker: had the set-up before the job gone to the background too, the log
  # would not exist yet when the ssh command returns.
  worker_bin = tmp_path / "worker_bin"
  _fake(worker_bin, "rm", 'sleep 1; PATH=/usr/bin:/bin exec rm "$@"')
  env = {k: v for k, v in os.environ.items() if k != "CFG_JAX_DISTRIBUTED"}
  env |= {"HOME": str(home), "PATH": f"{worker_bin}:{bin_dir}:{os.environ['PATH']}"}
  [train] = _tpu_vm("train", "--dry_run", *TRAIN[1:], bin_dir=bin_dir).stdout.splitlines()
  [logs] = _tpu_vm("logs", "--dry_run", bin_dir=bin_dir).stdout.splitlines()
  subprocess.run(["bash", "-c", _command_option(train)], env=env, check=True, timeout=60)
  assert (home / "cfg_jax_train.log").exists() and (home / "cfg_jax_train.pid").read_text()
  followed = subprocess.run(["bash", "-c", _command_option(logs)], env=env, check=True,
                            timeout=60, capture_output=True, text=True).stdout
  assert _calls(env_bin, "python") == [
      "-m cfg_jax.train --config=configs/mnist.py --workdir=gs://my-bucket/cfg_jax/mnist "
      "--config.training.batch_size=512 --config.sampling.w=(0.,3.)"]
  assert followed.splitlines() == [f"CFG_JAX_DISTRIBUTED=unset in {home / 'cfg_jax'}",
                                   "training done"]
  assert (home / "cfg_jax_train.exit").read_text() == "0\n"


@pytest.mark.parametrize("exit_code,deleted", [("0", True), ("75", False)])
def test_run_deletes_the_vm_only_after_training_succeeded(tmp_path, exit_code, deleted):
  bin_dir = tmp_path / "bin"
  _fake(bin_dir, "gcloud", f'[[ "$*" == *"cat ~/cfg_jax_train.exit"* ]] && echo {exit_code}; '
                           'exit 0')
  result = _tpu_vm("run", "--accelerator_type=v4-32", *TRAIN[1:], bin_dir=bin_dir, check=False,
                   env={"TMPDIR": str(tmp_path)})
  verbs = [call.split()[3] for call in _calls(bin_dir, "gcloud")]
  assert verbs == ["create", "scp", "ssh", "ssh", "ssh", "ssh"] + ["delete"] * deleted
  assert result.returncode == (0 if deleted else 1), result.stderr
  if not deleted:
    assert "keeping cfg-v4-32" in result.stdout and "tpu-vm delete cfg-v4-32" in result.stdout
  # `install` packed this checkout, configs included, for the workers.
  with tarfile.open(tmp_path / "cfg_jax-src.tar.gz") as tar:
    names = set(tar.getnames())
  assert {"./cfg_jax/train.py", "./configs/mnist.py", "./setup.cfg"} <= names
  assert not any(name.startswith("./.git/") or "__pycache__" in name for name in names)


def _sbatch(tmp_path, *, ntasks_per_node, srun_exit=0):
  bin_dir = tmp_path / "bin"
  _fake(bin_dir, "srun", f'echo "JAX_LOCAL_DEVICE_IDS=${{JAX_LOCAL_DEVICE_IDS:-unset}}" '
                         f'> "{bin_dir}/srun.env"; exit {srun_exit}')
  _fake(bin_dir, "scontrol", "exit 0")
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "PYTHON"}
  env |= {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
          "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_NTASKS": str(2 * ntasks_per_node),
          "SLURM_NTASKS_PER_NODE": str(ntasks_per_node), "SLURM_GPUS_ON_NODE": "4"}
  result = subprocess.run(["bash", str(SLURM), "configs/imagenet64.py", "/shared/runs/i64",
                           "--config.training.batch_size=512"], env=env, text=True,
                          capture_output=True, timeout=60)
  return result, bin_dir


@pytest.mark.parametrize("ntasks_per_node,local_devices", [(4, "unset"), (1, "0,1,2,3")])
def test_slurm_runs_one_training_command_per_process(tmp_path, ntasks_per_node, local_devices):
  result, bin_dir = _sbatch(tmp_path, ntasks_per_node=ntasks_per_node)
  assert result.returncode == 0, result.stderr
  assert _calls(bin_dir, "srun") == [
      "python -m cfg_jax.train --config=configs/imagenet64.py --workdir=/shared/runs/i64 "
      "--config.training.batch_size=512"]
  # One process per node sees every GPU of its node; one per GPU, jax picks SLURM_LOCALID.
  assert (bin_dir / "srun.env").read_text().strip() == f"JAX_LOCAL_DEVICE_IDS={local_devices}"
  assert _calls(bin_dir, "scontrol") == []


def test_slurm_requeues_a_preempted_job(tmp_path):
  result, bin_dir = _sbatch(tmp_path, ntasks_per_node=4, srun_exit=75)
  assert result.returncode == 75
  assert _calls(bin_dir, "scontrol") == ["requeue 4242"]


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4",
      "JAX_PROCESS_ID": "3"}, {"num_processes": 4, "process_id": 3}),
    ({"CFG_JAX_DISTRIBUTED": "1"}, {"num_processes": None, "process_id": None}),
    ({"SLURM_NTASKS": "16"}, {"num_processes": None, "process_id": None}),
    ({"SLURM_NTASKS": "1"}, None),
])
def test_runtime_initializes_jax_distributed_from_the_launchers_environment(
    monkeypatch, tmp_path, env, expected):
  calls = _isolate_runtime(monkeypatch, tmp_path)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  runtime.maybe_initialize_distributed()
  assert calls == ([] if expected is None else [expected])


def _isolate_runtime(monkeypatch, tmp_path):
  """No cluster variable, no TPU device file; returns the list of initialize() calls."""
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "CFG_JAX_DISTRIBUTED", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(runtime, "TPU_DEVICE_FILES", (str(tmp_path / "dev" / "accel[0-9]*"),
                                                    str(tmp_path / "dev" / "vfio" / "[0-9]*")))
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  return calls


class _Metadata(http.server.BaseHTTPRequestHandler):
  """A GCE metadata server that knows one attribute; records each request's path and header."""
  endpoints, flavor, requests = "", "Google", []

  def do_GET(self):  # noqa: N802 (http.server's name)
    _Metadata.requests.append((self.path, self.headers.get("Metadata-Flavor")))
    found = self.path.endswith("/attributes/worker-network-endpoints")
    self.send_response(200 if found else 404)
    if self.flavor:
      self.send_header("Metadata-Flavor", self.flavor)
    self.end_headers()
    self.wfile.write(self.endpoints.encode() if found else b"not found")

  def log_message(self, *args):
    del args


@pytest.fixture()
def metadata_server(monkeypatch):
  """A local metadata server, which runtime asks instead of metadata.google.internal."""
  server = http.server.HTTPServer(("127.0.0.1", 0), _Metadata)
  threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                   daemon=True).start()
  monkeypatch.setattr(runtime, "GCE_METADATA_URL", f"http://127.0.0.1:{server.server_port}"
                                                   f"/computeMetadata/v1/instance/attributes/")
  monkeypatch.setattr(_Metadata, "requests", [])
  yield _Metadata
  server.shutdown()
  server.server_close()


V4_32 = ",".join(f"unknown:unknown:10.0.0.{i}" for i in range(2, 6))  # 4 workers


@pytest.mark.parametrize("device_file,endpoints,flavor,initialized", [
    ("accel0", V4_32, "Google", True),
    ("vfio/0", V4_32, "Google", True),
    ("accel0", "unknown:unknown:10.0.0.2", "Google", False),
    ("accel0", V4_32, "", False),
    (None, V4_32, "Google", False),
], ids=["v4-32", "v5e-slice", "one-tpu-vm", "not-gce-metadata", "no-tpu"])
def test_a_cloud_tpu_pod_slice_initializes_jax_distributed_with_nothing_set(
    monkeypatch, tmp_path, metadata_server, device_file, endpoints, flavor, initialized):
  calls = _isolate_runtime(monkeypatch, tmp_path)
  if device_file:
    (tmp_path / "dev" / device_file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "dev" / device_file).touch()
  monkeypatch.setattr(metadata_server, "endpoints", endpoints)
  monkeypatch.setattr(metadata_server, "flavor", flavor)
  runtime.maybe_initialize_distributed()
  assert calls == ([{"num_processes": None, "process_id": None}] if initialized else [])
  assert metadata_server.requests == ([] if device_file is None else [
      ("/computeMetadata/v1/instance/attributes/worker-network-endpoints", "Google")])


def test_a_tpu_host_without_a_metadata_server_is_one_host(monkeypatch, tmp_path):
  calls = _isolate_runtime(monkeypatch, tmp_path)
  (tmp_path / "dev").mkdir()
  (tmp_path / "dev" / "accel0").touch()
  with socket.socket() as closed:  # a port where nothing listens
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
  monkeypatch.setattr(runtime, "GCE_METADATA_URL", f"http://127.0.0.1:{port}/attributes/")
  assert runtime.cloud_tpu_workers() == 1
  runtime.maybe_initialize_distributed()
  assert calls == []

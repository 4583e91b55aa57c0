r"""Trains cfg_jax on a Cloud TPU VM or pod slice: create, install, train, logs, delete.

    VM="--name=cfg --zone=us-central2-b"
    python launch/tpu_vm.py create $VM --accelerator_type=v4-32
    python launch/tpu_vm.py install $VM
    python launch/tpu_vm.py train $VM --config=configs/mnist.py \
        --workdir=gs://BUCKET/cfg_jax/mnist -- --config.training.batch_size=512
    python launch/tpu_vm.py logs $VM
    python launch/tpu_vm.py delete $VM

`run` chains all five (and deletes the VM only if training ended with exit code 0).
Every step is a `gcloud` (or `tar`) command; `--dry_run` prints them instead of running
them. A pod slice has several workers (hosts): `install` and `train` run on all of them
(`--worker=all`), each worker runs one training process, and the processes find each
other through jax.distributed (cfg_jax/runtime.py reads the slice from the TPU VM's
metadata). Training runs detached, appending to ~/cfg_jax_train.log on each worker, so
the laptop may disconnect; `logs` follows worker 0's log until training ends.

The runtime images' system Python is older than cfg_jax and jax need (3.10 on
tpu-ubuntu2204-base), so `install` creates a virtual environment of Python `--python`
(default 3.12, at least 3.11) with uv, which downloads a standalone CPython, and
`train` runs that environment's Python.

Only the standard library is used, so this runs wherever gcloud does.
"""
from __future__ import annotations

import argparse
import pathlib
import shlex
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
TARBALL = pathlib.Path(tempfile.gettempdir()) / "cfg_jax-src.tar.gz"
REMOTE_TARBALL = "cfg_jax-src.tar.gz"  # relative: in the home folder of every worker
REMOTE_REPO = "~/cfg_jax"
REMOTE_ENV = "~/cfg_jax_env"  # the Python environment that `install` creates on every worker
UV = "uv==0.13.9"  # installed with the system pip (--user: ~/.local/bin/uv)
MIN_PYTHON = (3, 11)
LOG, PID, EXIT = "~/cfg_jax_train.log", "~/cfg_jax_train.pid", "~/cfg_jax_train.exit"
TAR_EXCLUDES = (".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis")


def gcloud(args: argparse.Namespace, verb: str, *rest: str) -> list[str]:
  """`gcloud compute tpus tpu-vm <verb> ...` for the VM named by --name/--zone/--project."""
  project = [f"--project={args.project}"] if args.project else []
  return ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}", *project]


def ssh(args: argparse.Namespace, worker: str, command: str) -> list[str]:
  return gcloud(args, "ssh", args.name, f"--worker={worker}", f"--command={command}")


def create_commands(args: argparse.Namespace) -> list[list[str]]:
  spot = ["--spot"] if args.spot else []
  return [gcloud(args, "create", args.name, f"--accelerator-type={args.accelerator_type}",
                 f"--version={args.version}", *spot)]


def install_commands(args: argparse.Namespace) -> list[list[str]]:
  """Packs this checkout (configs included), copies it to every worker and installs it
  there into a new Python `--python` environment made by uv.

  The `gcs` extra (gcsfs, google-cloud-storage) is what a gs:// workdir needs.
  """
  excludes = [f"--exclude={pattern}" for pattern in TAR_EXCLUDES]
  uv = "~/.local/bin/uv"
  unpack_and_install = (
      f"rm -rf {REMOTE_REPO} && mkdir -p {REMOTE_REPO} && "
      f"tar -xzf ~/{REMOTE_TARBALL} -C {REMOTE_REPO} && "
      f"python3 -m pip install --quiet --user {UV} && "
      f"{uv} venv --quiet --clear --python {args.python} {REMOTE_ENV} && "
      f"{uv} pip install --quiet --python {REMOTE_ENV}/bin/python -e {REMOTE_REPO}'[gcs]' "
      f"{shlex.quote(args.jax)}")
  return [["tar", "-czf", str(TARBALL), *excludes, "-C", str(REPO), "."],
          gcloud(args, "scp", str(TARBALL), f"{args.name}:{REMOTE_TARBALL}", "--worker=all"),
          ssh(args, "all", unpack_and_install)]


def train_command(args: argparse.Namespace) -> list[str]:
  """Starts the same training command on every worker, detached from the ssh session.

  It runs the Python of `install`'s environment; on a pod slice each process finds the
  others in the TPU VM's metadata (cfg_jax/runtime.py), so no variable is set. Only the
  job goes to the background: the log and the pid file exist when the ssh command returns,
  so `logs` can follow them at once.
  """
  train = f"{REMOTE_ENV}/bin/python " + shlex.join(
      ["-m", "cfg_jax.train", f"--config={args.config}", f"--workdir={args.workdir}",
       *args.overrides])
  run_and_record_exit = shlex.quote(f"{train}; echo $? > {EXIT}")
  detach = f"setsid nohup bash -c {run_and_record_exit} >> {LOG} 2>&1 < /dev/null &"
  return ssh(args, "all",
             f"cd {REMOTE_REPO} && rm -f {EXIT} && : >> {LOG} && {{ {detach} echo $! > {PID}; }}")


def logs_command(args: argparse.Namespace) -> list[str]:
  """Prints a worker's log and follows it until its training process ends."""
  return ssh(args, args.worker, f"tail -n +1 --pid=$(cat {PID}) -f {LOG}")


def exit_code_command(args: argparse.Namespace) -> list[str]:
  return ssh(args, "0", f"cat {EXIT}")


def delete_command(args: argparse.Namespace) -> list[str]:
  return gcloud(args, "delete", args.name, "--quiet")


def execute(command: list[str], *, dry_run: bool, capture: bool = False) -> str:
  """Prints the command; runs it unless dry_run (then returns ""). Raises if it fails."""
  print(shlex.join(command), flush=True)
  if dry_run:
    return ""
  result = subprocess.run(command, check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
  return result.stdout or ""


def run(args: argparse.Namespace) -> int:
  """create, install, train, logs; then delete, unless training failed or --keep."""
  for command in (*create_commands(args), *install_commands(args), train_command(args),
                  logs_command(args)):
    execute(command, dry_run=args.dry_run)
  exit_code = execute(exit_code_command(args), dry_run=args.dry_run, capture=True).strip()
  if args.dry_run or (exit_code == "0" and not args.keep):
    execute(delete_command(args), dry_run=args.dry_run)
    return 0
  print(f"Training exited with code {exit_code}; keeping {args.name}. Rerun `train` to "
        f"resume from the last checkpoint, or delete it:\n{shlex.join(delete_command(args))}")
  return 0 if exit_code == "0" else 1


def check_python(value: str) -> None:
  """Raises ValueError unless --python is a version such as 3.12 or 3.12.7, >= MIN_PYTHON."""
  try:
    version = tuple(int(part) for part in value.split("."))
  except ValueError:
    version = ()
  if not 2 <= len(version) <= 3:
    raise ValueError(f"--python={value} is not a Python version such as 3.12.")
  if version < MIN_PYTHON:
    raise ValueError(f"--python={value} is too old: cfg_jax and jax need Python >= "
                     f"{'.'.join(map(str, MIN_PYTHON))}.")


def parse_args(argv: list[str]) -> argparse.Namespace:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--name", required=True, help="TPU VM name.")
  common.add_argument("--zone", required=True, help="e.g. us-central2-b (v4).")
  common.add_argument("--project", help="GCP project (default: gcloud's).")
  common.add_argument("--dry_run", action="store_true", help="Print the commands only.")
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  steps = parser.add_subparsers(dest="step", required=True)
  step = lambda name, help: steps.add_parser(name, help=help, parents=[common])

  def add_create_flags(p):
    p.add_argument("--accelerator_type", default="v4-8", help="v4-8 (one host), v4-32, ...")
    p.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU software version.")
    p.add_argument("--spot", action="store_true", help="A Spot VM: cheaper, preemptible.")

  def add_install_flags(p):
    p.add_argument("--jax", default="jax[tpu]>=0.10.2", help="The pip requirement for jax.")
    p.add_argument("--python", default="3.12",
                   help="Python version of the workers' environment (>= 3.11).")

  def add_train_flags(p):
    p.add_argument("--config", required=True, help="e.g. configs/mnist.py (in this checkout).")
    p.add_argument("--workdir", required=True,
                   help="gs://BUCKET/...: every worker writes its share of each checkpoint.")
    p.add_argument("overrides", nargs="*", help="After --: --config.<group>.<field>=value ...")

  def add_logs_flags(p):
    p.add_argument("--worker", default="0", help="Whose log: 0, 1, ... (all print metrics).")

  add_create_flags(step("create", "Create the TPU VM or pod slice."))
  add_install_flags(step("install", "Install this checkout on every worker."))
  add_train_flags(step("train", "Start training on every worker."))
  add_logs_flags(step("logs", "Follow a worker's training log."))
  step("delete", "Delete the TPU VM.")
  everything = step("run", "create, install, train, logs, delete.")
  for add in (add_create_flags, add_install_flags, add_train_flags, add_logs_flags):
    add(everything)
  everything.add_argument("--keep", action="store_true", help="Do not delete at the end.")
  return parser.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  if "python" in args:
    check_python(args.python)
  if args.step == "run":
    return run(args)
  commands = {"create": create_commands, "install": install_commands,
              "train": lambda a: [train_command(a)], "logs": lambda a: [logs_command(a)],
              "delete": lambda a: [delete_command(a)]}[args.step](args)
  for command in commands:
    execute(command, dry_run=args.dry_run)
  return 0


def _main_or_error(argv: list[str]) -> int:
  try:
    return main(argv)
  except ValueError as e:  # a bad flag value, found before anything runs
    print(f"tpu_vm.py: error: {e}", file=sys.stderr)
    return 2
  except subprocess.CalledProcessError as e:  # gcloud has printed why
    print(f"tpu_vm.py: {shlex.join(e.cmd)} failed with exit code {e.returncode}; nothing "
          f"was deleted.", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(_main_or_error(sys.argv[1:]))

r"""Guided distillation (Meng et al. 2023): a few-step, one-pass student of a guided teacher.

    python -m cfg_jax.distill --config=configs/mnist_distill.py --teacher_workdir=runs/mnist \
        --workdir=runs/mnist_distill [--config.distill.round_steps=2000 ...]

Stage 1 trains a student x̂_η(z_λ, c, w), the teacher's network with a w input
(config.distill.w_emb_ch) and its weights, to match the teacher's guided output for w drawn
from [w_min, w_max] (`distillation.stage1_loss`). Stage 2 then halves the student's number
of deterministic steps, from distill.start_steps down to distill.target_steps, one round a
halving (`distillation.stage2_loss`); each round starts from, and learns from, the EMA
weights of the round before (of stage 1 for the first).

Every phase is a training run of its own under --workdir: stage1/, then steps_<N>/ for
each N. Each has checkpoints, TensorBoard logs and sample grids, and resumes exactly like
`cfg_jax.train`: rerun the same command after SIGTERM (which saves and exits 75) or a
kill, and it continues bit for bit. Each phase's config.json is the student's full config,
so `cfg_jax.generate` and `cfg_jax.evaluate` sample a phase folder, or the distillation
folder for its last phase done, deterministically in the student's own number of steps.

The teacher is restored read-only, at the step recorded in <workdir>/distill.json when the
distillation started. It must be a v- or x-prediction ε-network without a w input: x̂ from
an ε-prediction is ill-conditioned at λ_min, where both losses compare x̂.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
from ml_collections import config_flags
import ml_collections

from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import config_lib
from cfg_jax import distillation
from cfg_jax import extras
from cfg_jax import files
from cfg_jax import models
from cfg_jax import runs
from cfg_jax import runtime
from cfg_jax import train
from cfg_jax import workdir_lock

PREDICTIONS = ("v", "x")  # the teacher parameterizations that distill


@dataclasses.dataclass(frozen=True)
class Phase:
  """One training run of the distillation: its folder, its student's sampling steps (the
  teacher then runs twice as many; stage 1's teacher is guided instead), its optimizer
  steps."""
  name: str
  sampling_steps: int
  num_steps: int

  @property
  def is_stage1(self) -> bool:
    return self.name == runs.STAGE1


def phases(config: ml_collections.ConfigDict) -> list[Phase]:
  """Stage 1, then a round per halving from distill.start_steps to distill.target_steps."""
  d = config.distill
  out = [Phase(runs.STAGE1, d.start_steps, d.stage1_steps)]
  steps = d.start_steps
  while steps > d.target_steps:
    steps //= 2
    out.append(Phase(runs.phase_dir_name(steps), steps, d.round_steps))
  return out


def check_teacher(teacher_config: ml_collections.ConfigDict, teacher_workdir: str) -> None:
  """ValueError unless the teacher is a w-free ε-network predicting v or x."""
  m = teacher_config.model
  where = f"--teacher_workdir={teacher_workdir}"
  if models.is_classifier(teacher_config):
    raise ValueError(f"{where} holds a classifier; the teacher is a diffusion model.")
  if m.w_emb_ch:
    raise ValueError(f"{where} holds a distilled student (model.w_emb_ch={m.w_emb_ch}); the "
                     f"teacher is a guided diffusion model without a w input.")
  if teacher_config.diffusion.prediction not in PREDICTIONS:
    raise ValueError(f"{where} predicts {teacher_config.diffusion.prediction!r}; distillation "
                     f"needs a teacher with diffusion.prediction in {PREDICTIONS} (x̂ from ε is "
                     f"ill-conditioned at λ_min). Train one with "
                     f"--config.diffusion.prediction=v.")


def student_config(teacher_config: ml_collections.ConfigDict,
                   config: ml_collections.ConfigDict, phase: Phase) -> ml_collections.ConfigDict:
  """The full config of a phase's student: the teacher's data, model and diffusion, a w
  input, the distillation's optimizer fields, deterministic sampling in its own steps."""
  student = ml_collections.ConfigDict(copy.deepcopy(teacher_config.to_dict()))
  student.seed = config.seed
  student.model.w_emb_ch = config.distill.w_emb_ch
  student.training.update(config.training.to_dict())
  student.training.num_steps = phase.num_steps
  student.sampling.update(sampler="ddim", num_steps=phase.sampling_steps, guidance_interval=())
  return student


def _load_teacher(workdir: epath.Path, teacher_workdir: str,
                  teacher_config: ml_collections.ConfigDict) -> runs.Run:
  """The teacher at the step recorded in distill.json when this distillation started (its
  newest, recorded now, on a first start); on a resume its signature is checked first."""
  path = workdir / runs.DISTILL_FILE
  signature = json.loads(json.dumps(checkpointing.signature(teacher_config)))  # tuples as lists
  if path.exists():
    record = json.loads(path.read_text())
    if record["teacher_signature"] != signature:
      raise ValueError(f"--workdir={workdir} distils the teacher in {record['teacher_workdir']} "
                       f"(step {record['teacher_step']}); --teacher_workdir={teacher_workdir} "
                       f"holds another model. Give that teacher, or another --workdir.")
    return runs.load_run(teacher_workdir, step=record["teacher_step"])
  teacher = runs.load_run(teacher_workdir)
  record = {"teacher_workdir": str(teacher_workdir), "teacher_step": teacher.step,
            "teacher_signature": signature}
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_bytes_atomic(path, json.dumps(record, indent=1).encode())
  return teacher


def stage1_loss(params, model, batch, rng, config, frozen, *, teacher_model, w_min, w_max):
  """`train.train_step`'s loss for stage 1: the student (train mode) against the guided
  teacher (eval mode, params `frozen`); `config` is the student's."""
  k_dropout, k_loss = jax.random.split(rng)
  student = lambda *a: model.apply({"params": params}, *a, train=True,
                                   rngs={"dropout": k_dropout})
  teacher = lambda *a: teacher_model.apply({"params": frozen}, *a, train=False)
  loss = distillation.stage1_loss(
      student, teacher, batch["x"], batch["label"], k_loss, w_min=w_min, w_max=w_max,
      null_label=config.data.num_classes,
      student_prediction=config.diffusion.prediction,
      teacher_prediction=config.diffusion.prediction, logsnr_min=config.diffusion.logsnr_min,
      logsnr_max=config.diffusion.logsnr_max)
  return loss, {"loss": loss}


def stage2_loss(params, model, batch, rng, config, frozen, *, w_min, w_max):
  """`train.train_step`'s loss for a round: the student (train mode) against two steps of
  the previous phase's student (eval mode, params `frozen`); `config` is the student's."""
  k_dropout, k_loss = jax.random.split(rng)
  student = lambda *a: model.apply({"params": params}, *a, train=True,
                                   rngs={"dropout": k_dropout})
  teacher = lambda *a: model.apply({"params": frozen}, *a, train=False)
  loss = distillation.stage2_loss(
      student, teacher, batch["x"], batch["label"], k_loss,
      num_steps=config.sampling.num_steps, w_min=w_min, w_max=w_max,
      prediction=config.diffusion.prediction,
      clip_x=config.sampling.clip_x, logsnr_min=config.diffusion.logsnr_min,
      logsnr_max=config.diffusion.logsnr_max)
  return loss, {"loss": loss}


def distill(config: ml_collections.ConfigDict, teacher_workdir: str, workdir: str) -> int:
  """Runs every phase not yet done, in order. Returns 0 when all are done,
  train.PREEMPTED_EXIT_CODE after a SIGTERM. Every input is checked before anything is
  compiled or written."""
  config_lib.validate_distill(config, num_devices=jax.device_count())
  extras.check_path(teacher_workdir, flag="--teacher_workdir")
  extras.check_path(workdir, flag="--workdir")
  teacher_config = config_files.load_config(teacher_workdir)
  config_lib.validate(teacher_config)
  check_teacher(teacher_config, teacher_workdir)
  plan = phases(config)
  for phase in plan:  # every phase's config, before anything runs
    config_lib.validate(student_config(teacher_config, config, phase),
                        num_devices=jax.device_count())
  # One SIGTERM watch for every phase: a SIGTERM between two exits 75 as one within a phase.
  with workdir_lock.hold(workdir), train.Preemption() as preemption:
    workdir = epath.Path(workdir)
    teacher = _load_teacher(workdir, teacher_workdir, teacher_config)
    return _distill_in(config, teacher, workdir, plan, preemption)


def _distill_in(config, teacher: runs.Run, workdir: epath.Path, plan: list[Phase],
                preemption: train.Preemption) -> int:
  frozen, previous = teacher.params, None
  w_range = dict(w_min=config.distill.w_min, w_max=config.distill.w_max)
  for phase in plan:
    student = student_config(teacher.config, config, phase)
    model = models.create_model(student)
    tx, _ = train.create_optimizer(student)
    phase_dir = workdir / phase.name
    if previous is not None:  # the previous phase's final EMA weights, as saved
      frozen = runs.load_run(workdir / previous.name, step=previous.num_steps).params
    if phase.is_stage1:
      loss_fn = functools.partial(stage1_loss, teacher_model=teacher.model, **w_range)
      init = functools.partial(_stage1_state, student, model, tx)
    else:
      loss_fn = functools.partial(stage2_loss, **w_range)
      init = functools.partial(train.create_train_state, student, model, tx)
    if preemption.requested:  # before this phase started: those before it are saved
      logging.warning("Preempted (SIGTERM) before phase %s; exiting with code %d. Rerun the "
                      "same command to resume.", phase.name, train.PREEMPTED_EXIT_CODE)
      return train.PREEMPTED_EXIT_CODE
    logging.info("Distillation phase %s: %d steps, the student samples in %d.", phase.name,
                 phase.num_steps, phase.sampling_steps)
    exit_code = train.fit(student, phase_dir, model=model, init=init, loss_fn=loss_fn,
                          frozen=frozen, preemption=preemption)
    if exit_code:
      return exit_code
    previous = phase
  return 0


def _stage1_state(config, model, tx, teacher_params) -> train.TrainState:
  """Stage 1's fresh state: the teacher's weights, and the w embedding as initialized (its
  last layer zero, so the student starts as the conditional teacher)."""
  fresh = models.init_params(model, jax.random.fold_in(jax.random.PRNGKey(config.seed), 0),
                             config)
  return train.create_train_state(config, model, tx, params={**fresh, **teacher_params})


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "A distillation config "
                                  "(configs/mnist_distill.py).", lock_config=True)
  flags.DEFINE_string("teacher_workdir", None, "The guided teacher's training run.")
  flags.DEFINE_string("workdir", None, "Where the phases are written (local or gs://).")
  flags.mark_flags_as_required(["config", "teacher_workdir", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.set_up_process()
  f = flags.FLAGS
  with runtime.one_line_errors("cfg_jax.distill"):
    return distill(f.config, f.teacher_workdir, f.workdir)


if __name__ == "__main__":
  _define_flags()
  runtime.refuse_unknown_overrides("cfg_jax.distill", "config", config_lib.DISTILL_RULES,
                                   schema="cfg_jax.config_lib.distill_base_config()")
  app.run(main)

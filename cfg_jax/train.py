r"""Algorithm 1 of Ho & Salimans: joint conditional/unconditional training, data parallel.

    python -m cfg_jax.train --config=configs/mnist.py --workdir=runs/mnist \
        [--config.training.batch_size=64 ...]

Parallelism. The train step is written for the global batch and compiled with `jax.jit`
over a one-axis `Mesh` of every device (`data`): the batch is sharded over `data`, the
state is replicated. This is the pmap programming model with the collectives written by
XLA: each device runs the step on its rows and the gradient mean over the batch becomes
the all-reduce that `lax.pmean(grads, "data")` would be under `jax.pmap`. All randomness
(∅ dropout of labels, λ, ε, network dropout) is drawn for the global batch, so a run on
4 devices computes what a run on 1 device computes. On several hosts each host feeds
only its rows of the global batch (`input_pipeline`), after `jax.distributed.initialize()`.

A run is a pure function of (config, step): the data of step t and the randomness of
step t depend only on (seed, t), so a run resumed from a checkpoint continues exactly
as an uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
import functools
import signal
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
from etils import epath
import flax
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import config_lib
from cfg_jax import diffusion
from cfg_jax import ema
from cfg_jax import ema_snapshots
from cfg_jax import extras
from cfg_jax import input_pipeline
from cfg_jax import metric_writer
from cfg_jax import models
from cfg_jax import parallel
from cfg_jax import runtime
from cfg_jax import runs
from cfg_jax import schedules
from cfg_jax import visualization
from cfg_jax import workdir_lock
from cfg_jax import xla_options

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped on SIGTERM after saving; rerun to resume.


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the config."""
  step: jax.Array
  params: Any
  ema_params: Any  # the EMA the sampler reads: constant, or the first width of a power EMA
  extra_emas: tuple  # the power EMAs of training.ema_sigma_rels[1:]; () for a constant EMA
  opt_state: Any
  rng: jax.Array  # the run's base key; step t uses fold_in(rng, t)
  nonfinite_steps: jax.Array  # steps whose loss or gradient was NaN/inf (their update skipped)
  first_nonfinite_step: jax.Array  # -1 while there is none


def create_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation,
                                                               optax.Schedule]:
  """Adam(W) after clipping the global gradient norm; its rate warms up linearly, then stays
  constant or (lr_schedule 'cosine') follows a half cosine to 0 at num_steps."""
  t = config.training
  warmup = max(t.warmup_steps, 1)
  after = (optax.constant_schedule(t.learning_rate) if t.lr_schedule == "constant" else
           optax.cosine_decay_schedule(t.learning_rate, max(t.num_steps - warmup, 1)))
  schedule = optax.join_schedules([optax.linear_schedule(0., t.learning_rate, warmup), after],
                                  [warmup])
  tx = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm),
                   optax.adamw(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps,
                               weight_decay=t.weight_decay))
  return tx, schedule


def create_train_state(config: ml_collections.ConfigDict, model: Any,
                       tx: optax.GradientTransformation, params: Any = None) -> TrainState:
  """A fresh state: params (initialized unless given), every EMA = params, optimizer state,
  base rng."""
  rng = jax.random.PRNGKey(config.seed)
  if params is None:
    params = models.init_params(model, jax.random.fold_in(rng, 0), config)
  extra_emas = ((params,) * (len(config.training.ema_sigma_rels) - 1)
                if config.training.ema == "power" else ())
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    extra_emas=extra_emas,
                    opt_state=tx.init(params), rng=rng, nonfinite_steps=jnp.zeros((), jnp.int32),
                    first_nonfinite_step=jnp.full((), -1, jnp.int32))


def ema_decays(step: jax.Array, training_config: ml_collections.ConfigDict
               ) -> tuple[jax.Array, ...]:
  """The decay of each EMA of the state (ema_params, *extra_emas) in the update after
  `step` steps: training.ema_decay's, or one per width of training.ema_sigma_rels."""
  t = training_config
  if t.ema == "constant":
    return (ema.constant_decay(step, t.ema_decay),)
  return tuple(ema.power_decay(step, ema.sigma_rel_to_gamma(s)) for s in t.ema_sigma_rels)


def diffusion_loss(params, model, batch, rng, config) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Algorithm 1: c ← ∅ w.p. p_uncond, λ ~ p(λ), ε ~ N(0, I), ‖ε_θ(z_λ, c) − ε‖² (mean)."""
  x, labels = batch["x"], batch["label"]
  k_uncond, k_logsnr, k_eps, k_dropout = jax.random.split(rng, 4)
  uncond = jax.random.bernoulli(k_uncond, config.training.p_uncond, labels.shape)
  labels = jnp.where(uncond, config.data.num_classes, labels)
  logsnr = schedules.sample_logsnr(k_logsnr, labels.shape, logsnr_min=config.diffusion.logsnr_min,
                                   logsnr_max=config.diffusion.logsnr_max)
  eps = jax.random.normal(k_eps, x.shape, jnp.float32)
  z = diffusion.q_sample(x, logsnr, eps)
  out = model.apply({"params": params}, z, logsnr, labels, train=True,
                    rngs={"dropout": k_dropout})
  target = diffusion.prediction_target(x, eps, logsnr, prediction=config.diffusion.prediction)
  loss = jnp.mean(jnp.square(out - target))
  return loss, {"loss": loss}


def classifier_loss(params, model, batch, rng, config) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of p_φ(c | z_λ, λ) with λ ~ p(λ), the diffusion model's own p(λ)."""
  x, labels = batch["x"], batch["label"]
  k_logsnr, k_eps, k_dropout = jax.random.split(rng, 3)
  logsnr = schedules.sample_logsnr(k_logsnr, labels.shape, logsnr_min=config.diffusion.logsnr_min,
                                   logsnr_max=config.diffusion.logsnr_max)
  z = diffusion.q_sample(x, logsnr, jax.random.normal(k_eps, x.shape, jnp.float32))
  logits = model.apply({"params": params}, z, logsnr, train=True, rngs={"dropout": k_dropout})
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, {"loss": loss, "accuracy": accuracy}


def train_step(state: TrainState, batch: dict[str, jax.Array], frozen: Any = None, *,
               model: Any, tx: optax.GradientTransformation, schedule: optax.Schedule,
               config: ml_collections.ConfigDict, loss_fn: Any = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the global batch, then the EMA update.

  `loss_fn(params, model, batch, rng, config[, frozen]) -> (loss, metrics)` defaults to
  Algorithm 1's or the classifier's loss; `frozen` is what it reads but does not train
  (a distillation teacher's params), passed only when not None.

  A step whose loss or gradient is not finite changes nothing but the step and the
  non-finite counters, so the state (and every checkpoint of it) stays finite.
  """
  if loss_fn is None:
    loss_fn = classifier_loss if models.is_classifier(config) else diffusion_loss
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, model, batch, rng, config, *(() if frozen is None else (frozen,)))
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params, *extra_emas = (
      ema.update(e, params, decay) for e, decay in
      zip((state.ema_params, *state.extra_emas), ema_decays(state.step, config.training)))
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params),
      ema_params=keep(ema_params, state.ema_params),
      extra_emas=keep(tuple(extra_emas), state.extra_emas),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where(~finite & (state.first_nonfinite_step < 0), state.step,
                                     state.first_nonfinite_step))
  metrics |= {"grad_norm": grad_norm, "learning_rate": schedule(state.step)}
  return new_state, metrics


class NonFiniteError(RuntimeError):
  """The loss or gradient became NaN/inf and config.training.nonfinite is 'stop'."""


class Preemption:
  """Whether to stop for preemption after a step: SIGTERM, agreed on by every host.

  One host: a SIGTERM handler sets a flag. Several hosts: jax's preemption sync point,
  which the coordination service triggers on SIGTERM, returns True on all hosts at the
  same step, so that they all save that step. A context manager: the SIGTERM handler is
  this host's from its creation until the `with` block ends.
  """

  def __init__(self):
    self._requested = False
    self._multihost = jax.process_count() > 1
    if not self._multihost:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    if self._multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  @property
  def requested(self) -> bool:
    """Whether this host has had a SIGTERM (several hosts act on it at their next step)."""
    return self._requested

  def __enter__(self) -> Preemption:
    return self

  def __exit__(self, *exc_info) -> None:
    if not self._multihost:  # the handler before this watch
      signal.signal(signal.SIGTERM, self._previous)


def ema_layout(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The EMA fields that fix the train state's structure, as a checkpoint's meta keeps them."""
  t = config.training
  return ({"training.ema": "power", "training.ema_sigma_rels": list(t.ema_sigma_rels)}
          if t.ema == "power" else {"training.ema": "constant"})


def check_ema_layout(meta: dict[str, Any], config: ml_collections.ConfigDict, where: Any) -> None:
  """Refuses, before any array is read, to resume a checkpoint with other EMAs than the
  config's (a checkpoint from before power EMAs has the constant one)."""
  saved, current = meta.get("ema", {"training.ema": "constant"}), ema_layout(config)
  if saved != current:
    # Another kind of EMA: only the kind differs; the same kind: its widths.
    fields = (["training.ema"] if saved["training.ema"] != current["training.ema"] else
              sorted(set(saved) | set(current)))
    diffs = "; ".join(f"config.{k}: checkpoint has {saved.get(k)!r}, config has "
                      f"{current.get(k)!r}" for k in fields if saved.get(k) != current.get(k))
    raise checkpointing.ModelMismatchError(
        f"The checkpoint {where} tracks other EMAs than the config; refusing to resume it. "
        f"Use another --workdir or the run's own EMA fields. {diffs}")


def check_finite(state: TrainState, config: ml_collections.ConfigDict,
                 checkpointer: checkpointing.Checkpointer) -> int:
  """The number of skipped non-finite steps; raises NonFiniteError if that is not allowed."""
  skipped = int(state.nonfinite_steps)
  if skipped and config.training.nonfinite == "stop":
    raise NonFiniteError(
        f"Non-finite loss or gradient at step {int(state.first_nonfinite_step)}; stopping "
        f"without saving. The last good checkpoint (step {checkpointer.latest_step()}) in "
        f"{checkpointer.directory} is intact. Lower config.training.learning_rate, or set "
        f"config.training.nonfinite='skip' to skip such steps.")
  return skipped


def write_sample_grids(config: ml_collections.ConfigDict, model: Any, ema_params: Any,
                       workdir: epath.Path, step: int,
                       writer: metric_writer.SummaryWriter) -> None:
  """A PNG grid (one row per class) of EMA samples per w of config.sampling.w.

  Each grid goes to `workdir/samples/` and to TensorBoard (tag `samples/w<w>`).
  """
  if models.is_classifier(config):
    return
  s = config.sampling
  run = runs.Run(config, model, ema_params, step)
  sample_fn = runs.make_run_sample_fn(run)
  classes = min(config.data.num_classes, s.grid_classes)
  labels = np.repeat(np.arange(classes, dtype=np.int32), s.num_per_class)
  for w in s.w:
    x = runs.sample_in_batches(sample_fn, ema_params, labels, w=float(w),
                               batch_size=len(labels), seed=config.seed, progress=False)
    if jax.process_index() == 0:
      image = visualization.save_sample_picture(
          x, labels, workdir / "samples" / f"step_{step:08d}_w{w:g}.png", num_classes=classes,
          title=f"step {step}, w={w:g}")
      writer.write_images(step, {f"samples/w{w:g}": image})
  writer.flush()


def train(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Trains to config.training.num_steps in `workdir`, resuming from its newest checkpoint.

  A damaged newest checkpoint is moved aside and the one before it used (see
  `Checkpointer.restore_newest`). Returns the process exit code: 0 when done,
  PREEMPTED_EXIT_CODE after a SIGTERM. Raises workdir_lock.WorkdirLockedError if another
  trainer is using `workdir`.
  """
  config_lib.validate(config, num_devices=jax.device_count())
  extras.check_path(workdir, flag="--workdir")
  with workdir_lock.hold(workdir):
    return _train_in(config, epath.Path(workdir))


def _train_in(config: ml_collections.ConfigDict, workdir: epath.Path) -> int:
  """`train` once the config is valid and the workdir is this trainer's."""
  model = models.create_model(config)
  tx, _ = create_optimizer(config)
  with Preemption() as preemption:
    return fit(config, workdir, model=model,
               init=lambda frozen: create_train_state(config, model, tx), preemption=preemption)


def fit(config: ml_collections.ConfigDict, workdir: epath.Path, *, model: Any, init: Any,
        preemption: Preemption, loss_fn: Any = None, frozen: Any = None) -> int:
  """The training loop of a run in `workdir`, to config.training.num_steps.

  Resumes from the newest checkpoint that restores, else starts from `init(frozen)`, a
  fresh TrainState (a distillation student starts from its teacher's params). Each step is
  `train_step` with `loss_fn` and `frozen` (see there); checkpoints, SIGTERM, the non-finite
  policy, logs and sample grids follow config.training. SIGTERM is watched by the
  caller's `preemption`, which may span several calls (distillation's phases). Returns 0
  when done, PREEMPTED_EXIT_CODE after a SIGTERM.
  """
  t = config.training
  dataset = input_pipeline.create_dataset(config)
  tx, schedule = create_optimizer(config)

  mesh = parallel.data_mesh()
  replicated, data_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)

  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=t.max_to_keep)
  latest = checkpointer.latest_step()
  if latest is None:
    state = jax.jit(init, out_shardings=replicated)(frozen)
  else:  # the newest checkpoint that restores; damaged newer ones are moved aside
    abstract = checkpointing.abstract_like(jax.eval_shape(init, frozen), replicated)

    def restore(step):
      meta = checkpointer.restore_meta(step)
      check_ema_layout(meta, config, checkpointer.directory / str(step))
      if "ema" in meta:
        return checkpointer.restore(step, abstract, config)
      # Written before the state had extra_emas (and so with the constant EMA only).
      fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)
                if f.name != "extra_emas"}
      restored, meta = checkpointer.restore(step, fields, config)
      return TrainState(**restored, extra_emas=()), meta

    latest, (state, _) = checkpointer.restore_newest(restore, move_damaged=True)
    logging.info("Resumed from %s at step %d.", checkpointer.directory, latest)
  config_files.save_config(workdir, config)  # after the restore, which may refuse the workdir
  step = int(state.step)

  jit_train_step = xla_options.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config,
                        loss_fn=loss_fn),
      in_shardings=(replicated, data_sharding, replicated),
      out_shardings=(replicated, replicated), donate_argnums=(0,))

  writer = metric_writer.SummaryWriter(workdir / "tensorboard",
                                       just_logging=jax.process_index() > 0)
  if step == 0:
    writer.write_hparams(config_lib.flatten(config))
  meta = {"signature": checkpointing.signature(config), "ema": ema_layout(config)}
  snapshots = ema_snapshots.SnapshotWriter(workdir, config) if t.ema == "power" else None
  pending_metrics, last_log = [], (time.perf_counter(), step)
  exit_code = 0
  try:
    for step, local_batch in dataset.iterate(step, batch_size=t.batch_size, stop_step=t.num_steps):
      state, metrics = jit_train_step(state, parallel.global_batch(local_batch, data_sharding),
                                      frozen)
      pending_metrics.append(metrics)
      done = step + 1
      preempted = preemption.reached(done)
      last = done == t.num_steps
      if done % t.log_every == 0 or last:
        skipped = check_finite(state, config, checkpointer)
        last_log = _log(writer, done, pending_metrics, last_log, t, skipped)
        pending_metrics = []
      if snapshots and (done % t.ema_snapshot_every == 0 or last):
        snapshots.save(done, state)
      if done % t.checkpoint_every == 0 or last or preempted:
        check_finite(state, config, checkpointer)
        checkpointer.save(done, state, meta | {"data_step": done})
      if (done % t.sample_every == 0 or last) and not preempted:  # leave before the deadline
        write_sample_grids(config, model, state.ema_params, workdir, done, writer)
      if preempted:
        logging.warning("Preempted (SIGTERM): saved step %d; exiting with code %d. Rerun the "
                        "same command to resume.", done, PREEMPTED_EXIT_CODE)
        exit_code = PREEMPTED_EXIT_CODE
        break
  finally:
    checkpointer.wait()
    checkpointer.close()
    if snapshots:
      snapshots.close()
    writer.close()
  return exit_code


def _log(writer, step, metrics, last, training_config, skipped):
  """Writes the mean of the pending metrics, steps/s, images/s and the skipped-step count,
  and logs the progress with its ETA. Returns the new (time, step) mark.
  """
  metrics = jax.device_get(metrics)
  scalars = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
  now = time.perf_counter()
  steps_per_sec = (step - last[1]) / max(now - last[0], 1e-9)
  scalars["steps_per_sec"] = steps_per_sec
  scalars["images_per_sec"] = steps_per_sec * training_config.batch_size
  scalars["skipped_nonfinite_steps"] = skipped
  writer.write_scalars(step, scalars)
  writer.flush()
  remaining = (training_config.num_steps - step) / max(steps_per_sec, 1e-9)
  logging.info("Step %d of %d, ETA %s.", step, training_config.num_steps,
               time.strftime("%H:%M:%S", time.gmtime(remaining)) if remaining < 86_400
               else f"{remaining / 86_400:.1f} days")
  return now, step


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/<name>.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None,
                      "Directory for checkpoints, logs and samples (local or gs://).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.set_up_process()
  with runtime.one_line_errors("cfg_jax.train"):
    return train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  _define_flags()
  runtime.refuse_unknown_overrides("cfg_jax.train", "config", config_lib.RULES,
                                   schema="cfg_jax.config_lib.base_config()")
  app.run(main)

"""The training loop: init or restore, step, log, evaluate, checkpoint, plot.

    state = restore_latest(...) or init_state(...)      (the input iterator restored with it; a fresh state takes
                                                          its params from TrainConfig.init_checkpoint if set)
    for step in range(state.step, num_steps):
      state, metrics = train_step(state, global_batch(next(batches)), dropout_rng)
      (log every log_every, evaluate every eval_every, checkpoint every checkpoint_every, stop on preemption)

Exact resume: a checkpoint holds the state and the input iterator's position (when the iterator is a
checkpoints.CheckpointableIterator, as inputs.batches(..., checkpointable=True) returns), and the dropout key of
a step is the run's key folded with the step number, so a run killed at any point and restarted with the same
command produces the same losses, bit for bit, as one that was never interrupted.

Faults:
- Preemption (faults.PreemptionWatch): SIGTERM (one process) or JAX's preemption sync point (several
  processes) makes the loop save a checkpoint at the next step boundary, wait for it, log "preempted at step N:
  checkpoint saved" and return with summary["preempted"] = True (so `python -m glm_jax.main train` exits with
  status 0; rerun it to resume).
- Non-finite values (faults.FiniteGuard): the first step whose loss or grad norm is NaN or Inf is recorded on
  device and read by the host only at log steps and before every save (which also checks that the params are
  finite), so steps stay asynchronously dispatched; the price is that a NaN is reported up to log_every steps
  late. The loop then raises FloatingPointError naming the step and the last good checkpoint, and never saves
  that state.
- An unwritable model_dir fails at start (checkpoints.ensure_writable), before anything is compiled or read.
- Torn checkpoints are skipped on restore (checkpoints.restore_latest); saves are asynchronous and the loop
  waits for them before it returns or raises.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import numpy as np
import optax
from clu import metric_writers
from etils import epath
from tqdm import tqdm

from glm_jax.data import counters
from glm_jax.model import GLM, GLMConfig
from glm_jax.train import (
  checkpoints,
  faults,
  metrics as metrics_lib,
  optimizer,
  partitioning,
  step as step_lib,
)
from glm_jax.train.state import TrainState

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
MODEL_CONFIG_FILE = "model_config.json"

# How many dispatched steps the host may run ahead of the devices: enough to keep an accelerator fed and to overlap
# the host's input work with a CPU's compute, few enough that a step and its metric update (about 2 computations
# a step per device) stay well under XLA:CPU's limit of 32 in-flight computations per device. Unbounded run-ahead
# (between log steps the host reads nothing back) reached it, and a multi-device launch waiting for a slot holds one
# of the client's max(cores, devices) threads that the queued computations need: with 8 host devices the run
# deadlocked in its next all-reduce (7 of 8 participants arrived; seen in CI).
MAX_STEPS_IN_FLIGHT = 4


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run. batch_size is global (all processes); length is the packed row length."""

  # 0: no step; a run that starts afresh saves its starting state (initialized, or init_checkpoint's params) as
  # checkpoint 0, a baseline that `eval`, `score` and `infer` read like any checkpoint.
  num_steps: int = 1000
  batch_size: int = 8
  length: int = 256
  accumulation_steps: int = 1
  seed: int = 0
  log_every: int = 10
  eval_every: int = 200
  eval_steps: int = 10  # 0: no eval loss, only the evaluation hook's metrics (e.g. SuperGLUE's, see `train`)
  checkpoint_every: int = 500
  max_to_keep: int = 3
  peak_flops_per_device: float | None = None  # None: the table in train/metrics.py (CPU: an estimate)
  # A checkpoint directory (a `convert --output_dir`, or another run's model_dir) whose newest params start a run
  # whose model_dir holds no checkpoint yet: fine-tuning. Only the params are read (placed with this run's
  # shardings); the optimizer state is fresh and the step is 0. Ignored once model_dir has a checkpoint (resume).
  init_checkpoint: str | None = None
  # The steps the learning-rate schedule spans (its decay ends there unless OptimizerConfig.decay_steps says
  # otherwise); None: num_steps. A resumed run keeps the value it started with (glm_jax/train/experiment.py), so
  # raising num_steps at resume trains on at the schedule's floor instead of silently rescaling it.
  schedule_steps: int | None = None
  # The one loss configuration (train/step.py): `TrainConfig.loss = @LossConfig()` with
  # `LossConfig.objective_weights = @glm_mixture_rates()` weighs the objectives as the reference does.
  loss: step_lib.LossConfig = step_lib.LossConfig()

  def __post_init__(self):
    if self.max_to_keep is not None and self.max_to_keep < 1:
      raise ValueError(
        f"TrainConfig.max_to_keep={self.max_to_keep} would delete every checkpoint right after it is written (a "
        f"preemption's save included); keep at least 1, or None to keep them all"
      )
    if self.num_steps < 0:
      raise ValueError(f"TrainConfig.num_steps={self.num_steps} must be at least 0 (0: save the untrained model)")
    for name in ("batch_size", "length", "log_every", "eval_every", "checkpoint_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be at least 1")
    if self.eval_steps < 0:
      raise ValueError(f"TrainConfig.eval_steps={self.eval_steps} must be at least 0 (0: no eval loss)")

  @property
  def total_schedule_steps(self) -> int:
    return self.schedule_steps or self.num_steps

  def built_schedule_steps(self, warmup_steps: int) -> int:
    """The steps the optimizer is built with: total_schedule_steps, or for a run of no steps any length its warmup
    fits in (no update runs, and the optimizer state's shapes do not depend on the schedule)."""
    return self.total_schedule_steps or max(warmup_steps, 1)


def init_from_checkpoint(
  directory: str, state: TrainState, shardings: TrainState, tx: optax.GradientTransformation
) -> TrainState:
  """`state` with its params replaced by the newest params under `directory` (placed in `shardings.params`),
  a fresh optimizer state for them and step 0. Raises ValueError naming the params that do not fit."""
  params = checkpoints.restore_params(directory, checkpoints.abstract_like(state.params, shardings.params))
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  log.info("initialized the params from %s (fresh optimizer state, step 0)", directory)
  return state.replace(params=params, opt_state=opt_state)  # a fresh state's step is 0


def _eval(
  eval_step,
  params,
  batches: Iterable[dict],
  num_batches: int,
  mesh,
  loss_config: step_lib.LossConfig,
  required: bool = True,
) -> dict[str, float]:
  """The eval metrics of `num_batches` batches; {} for a split with no batch at all unless `required` (then, as for
  batches without a target token, ValueError)."""
  sums = None
  for i, batch in enumerate(batches):
    if i == num_batches:
      break
    out = jax.device_get(eval_step(params, partitioning.global_batch(batch, mesh)))
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}
    sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
  if sums is None and not required:
    return {}
  if sums is None or sums["num_tokens"] == 0:
    raise ValueError(
      "the eval split gave no target token (it is empty, or holds fewer rows than one batch): check the Task's "
      "eval split (`python -m glm_jax.main inspect --split ...`), or set DataConfig.eval_split = None"
    )
  return step_lib.eval_metrics(sums, loss_config)


HOOK_PREFIX = "cloze_"


def _hooked(metrics: dict[str, float]) -> dict[str, float]:
  wrong = [k for k in metrics if not k.startswith(HOOK_PREFIX)]
  if wrong:
    raise ValueError(f"an evaluation hook's metrics are named {HOOK_PREFIX}*: got {wrong}")
  return {k: float(v) for k, v in metrics.items()}


def eval_line(step: int, metrics: dict[str, float]) -> str:
  """The console line of one evaluation; with several objectives, each one's loss too, and the evaluation hook's
  metrics (`cloze_*`)."""
  parts = []
  if "loss" in metrics:
    parts.append(f"eval loss {metrics['loss']:.4f} accuracy {metrics['accuracy']:.3f}")
    by_objective = {k[len("loss_") :]: v for k, v in metrics.items() if k.startswith("loss_")}
    if len(by_objective) > 1:
      parts[-1] += " (" + ", ".join(f"{name} {loss:.3f}" for name, loss in by_objective.items()) + ")"
  hooked = {k: v for k, v in metrics.items() if k.startswith(HOOK_PREFIX)}
  if hooked:
    parts.append(", ".join(f"{k} {v:.4f}" if v % 1 else f"{k} {v:.0f}" for k, v in hooked.items()))
  return f"step {step}: " + "; ".join(parts)


def restore_sharded_params(model: GLM, checkpoint: str, mesh, length: int):
  """(params, their shardings): the newest params under `checkpoint` (a train model_dir or a convert output),
  restored straight into the rule shardings of `model` on `mesh`. Raises ValueError naming params that do not
  fit the model."""
  boxed = partitioning.abstract_boxed_params(model, length)
  shardings = partitioning.logical_shardings(boxed, mesh)
  return checkpoints.restore_params(checkpoint, checkpoints.abstract_like(nn.unbox(boxed), shardings)), shardings


def evaluate(
  model: GLM,
  params,
  param_shardings,
  mesh,
  eval_batches: Iterable[dict[str, np.ndarray]],
  num_batches: int,
  loss_config: step_lib.LossConfig = step_lib.LossConfig(),
  required: bool = True,
) -> dict[str, float]:
  """Loss and token accuracy (over Part B targets) of `params` on `num_batches` of `eval_batches`, with the
  training loop's eval step (step.eval_metrics: the loss weighted as `loss_config` weighs it, each objective's);
  {} when there is no batch at all and not `required`."""
  eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(model, loss_config), param_shardings, mesh)
  return _eval(eval_step, params, eval_batches, num_batches, mesh, loss_config, required)


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """What `train` runs and `compile` compiles for one mesh: the model, the optimizer, the state's shardings (by the
  rules table) and the jitted train step (`step.make_train_step` with its shardings stated)."""

  model: GLM
  tx: optax.GradientTransformation
  shardings: TrainState
  train_step: Callable


def train_program(
  model_config: GLMConfig,
  train_config: TrainConfig,
  optimizer_config: optimizer.OptimizerConfig,
  mesh: jax.sharding.Mesh,
) -> TrainProgram:
  """The one place the training step is built, for `train` and for ahead-of-time compilation (glm_jax/train/aot.py).
  Raises ValueError when the batch does not split over the mesh's batch axes."""
  tc = train_config
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if tc.batch_size % batch_devices:
    raise ValueError(
      f"TrainConfig.batch_size={tc.batch_size} does not split over data*fsdp={batch_devices} devices "
      f"(make it a multiple of {batch_devices})"
    )
  model = GLM(model_config)
  schedule_steps = tc.built_schedule_steps(optimizer_config.warmup_steps)
  tx = optimizer.make_optimizer(optimizer_config, schedule_steps)
  schedule = optimizer.learning_rate_schedule(optimizer_config, schedule_steps)
  shardings = partitioning.state_shardings(partitioning.abstract_boxed_params(model, tc.length), tx, mesh)
  train_step = step_lib.jit_train_step(
    step_lib.make_train_step(model, tx, schedule, tc.accumulation_steps, tc.loss), shardings, mesh
  )
  return TrainProgram(model, tx, shardings, train_step)


def train(
  model_config: GLMConfig,
  train_config: TrainConfig,
  optimizer_config: optimizer.OptimizerConfig,
  mesh_config: partitioning.MeshConfig,
  train_batches: Iterator[dict[str, np.ndarray]],
  model_dir: str,
  eval_batches: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
  progress: bool = True,
  eval_hook: Callable[[Any], dict[str, float]] | None = None,
) -> dict:
  """Trains to `train_config.num_steps`, resuming from the newest checkpoint in `model_dir` if there is one.

  train_batches yields process-local numpy batches of model features [batch_size / processes, length]; when it
  is a checkpoints.CheckpointableIterator (inputs.TFDataBatches) its position is saved with every checkpoint
  and restored with the state, otherwise a resumed run restarts it. eval_batches, if given, returns a fresh
  iterable of validation batches for each evaluation. eval_hook, if given, runs at each evaluation too: it takes the
  params (sharded as the state) and returns more metrics, named `cloze_*` (the command line hands it the SuperGLUE
  evaluation of glm_jax/eval; this loop does not import the evaluation code); with a hook, an eval split without
  loss rows (a test split) is evaluated by the hook alone, and `eval_steps=0` skips the loss (for a split whose
  rows do not fit the training layout, e.g. WSC validation's ungrouped candidates).
  Returns a summary: steps (reached), first_loss (of this run), final_loss, final_eval_loss, preempted, state.
  Raises FloatingPointError on a non-finite loss, PermissionError if model_dir is not writable.
  """
  tc = train_config
  started = time.perf_counter()
  checkpoints.ensure_writable(model_dir)
  if eval_batches is not None and not tc.eval_steps and eval_hook is None:
    raise ValueError(
      "TrainConfig.eval_steps=0 evaluates no loss, and this Task has no cloze metrics to evaluate instead: bind "
      "eval_steps to at least 1 (or DataConfig.eval_split = None: no evaluation)"
    )
  evaluates = (eval_batches is not None and tc.eval_steps > 0) or eval_hook is not None
  data_iterator = train_batches if isinstance(train_batches, checkpoints.CheckpointableIterator) else None
  if data_iterator is None:
    log.info(
      "the input position is not checkpointed (a plain iterator, or DataConfig.checkpoint_input=False): "
      "a resumed run restarts its input stream"
    )
  mesh = partitioning.make_mesh(mesh_config)
  program = train_program(model_config, tc, optimizer_config, mesh)
  model, tx, shardings, train_step = program.model, program.tx, program.shardings, program.train_step
  root_rng = jax.random.key(tc.seed)
  manager = checkpoints.make_manager(model_dir, tc.checkpoint_every, tc.max_to_keep)
  # Restored straight into the state's shapes and shardings: a resume holds one state, never a fresh one beside it.
  abstract, _ = partitioning.abstract_state(model, tx, mesh, tc.length, shardings)
  state = checkpoints.restore_latest(manager, abstract, data_iterator)
  fresh = state is None
  if not fresh:
    log.info("restored step %d from %s", int(state.step), model_dir)
    if tc.init_checkpoint:
      log.info("init_checkpoint %s is not read: the run resumes from its own checkpoint", tc.init_checkpoint)
  else:
    state, _ = partitioning.init_state(model, tx, mesh, jax.random.fold_in(root_rng, 0), tc.length, shardings)
    if tc.init_checkpoint:
      state = init_from_checkpoint(tc.init_checkpoint, state, shardings, tx)
  if jax.process_index() == 0:
    (epath.Path(model_dir) / MODEL_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(model_config), indent=2))

  eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(model, tc.loss), shardings.params, mesh)
  dropout_rng = jax.random.fold_in(root_rng, 1)

  writer = metric_writers.create_default_writer(
    os.path.join(model_dir, "tensorboard"), just_logging=jax.process_index() > 0, asynchronous=False
  )
  metrics_path = os.path.join(model_dir, METRICS_FILE)
  is_chief = jax.process_index() == 0
  flops_token = metrics_lib.flops_per_token(model_config, tc.length)
  peak, peak_is_estimate = metrics_lib.peak_flops_per_device(override=tc.peak_flops_per_device)
  mfu_name = "mfu_estimate" if peak_is_estimate else "mfu"

  start = int(jax.device_get(state.step))
  summary = {"steps": start, "first_loss": None, "final_loss": None, "final_eval_loss": None, "final_eval": None,
             "preempted": False}  # fmt: skip
  shown = progress and is_chief
  # On a terminal the bar redraws itself in place; into a file or a pipe every redraw would be a line, so there the
  # bar's figures are printed as a line at each evaluation and checkpoint instead.
  live = shown and sys.stderr.isatty()
  bar = tqdm(total=tc.num_steps, initial=start, disable=not live, dynamic_ncols=True)
  postfix: dict[str, str] = {}

  def report(line: str) -> None:
    if shown:
      bar.write(line, file=sys.stderr)

  reported, data_line = [start], None

  def report_progress(step_done: int) -> None:
    if not live and postfix and reported[0] != step_done:
      reported[0] = step_done
      report(f"step {step_done}/{tc.num_steps}: " + ", ".join(f"{k} {v}" for k, v in postfix.items()))

  finite = faults.FiniteGuard()
  preemption = faults.PreemptionWatch()
  window_start, window_steps = time.perf_counter(), 0
  in_flight: collections.deque = collections.deque()
  try:
    if fresh and tc.num_steps == 0:  # the untrained model, as a checkpoint
      checkpoints.save(manager, state, model_config, data_iterator=data_iterator, step=0, force=True)
    for step in range(start, tc.num_steps):
      try:
        batch = next(train_batches)
      except StopIteration:
        raise ValueError(
          f"the training input ran out at step {step} (an empty train split, or fewer rows than one batch of "
          f"{tc.batch_size}): check the Task's train split (`python -m glm_jax.main inspect --split ...`)"
        ) from None
      state, metrics = train_step(state, partitioning.global_batch(batch, mesh), dropout_rng)
      in_flight.append(metrics["loss"])
      if len(in_flight) > MAX_STEPS_IN_FLIGHT:
        in_flight.popleft().block_until_ready()
      step_done = step + 1
      finite.update(step_done, metrics)
      window_steps += 1
      bar.update(1)
      if step_done % tc.log_every == 0 or step_done == tc.num_steps or step == start:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - window_start
        tokens_per_second = window_steps * tc.batch_size * tc.length / elapsed
        record = {
          "step": step_done,
          "split": "train",
          **metrics,
          "tokens_per_second": tokens_per_second,
          mfu_name: metrics_lib.mfu(tokens_per_second, flops_token, peak, jax.device_count()),
        }
        if step == start:  # the first window includes compilation: log its loss, not its speed
          record.pop("tokens_per_second")
          record.pop(mfu_name)
          summary["first_loss"] = metrics["loss"]
        summary["final_loss"] = metrics["loss"]
        writer.write_scalars(step_done, {k: v for k, v in record.items() if k not in ("step", "split")})
        if is_chief:
          metrics_lib.append_jsonl(metrics_path, record)
        finite.check(manager, step_done)
        checkpoints.raise_failed_save(manager)  # a background save that failed, without waiting for the next
        postfix = {"loss": f"{metrics['loss']:.3f}", "lr": f"{metrics['learning_rate']:.2e}"}
        if "tokens_per_second" in record:
          postfix["tok/s"] = f"{tokens_per_second:,.0f}"
          postfix["MFU" + ("(est.)" if peak_is_estimate else "")] = f"{record[mfu_name]:.2%}"
        bar.set_postfix(postfix, refresh=False)
        window_start, window_steps = time.perf_counter(), 0
      if evaluates and (step_done % tc.eval_every == 0 or step_done == tc.num_steps):
        eval_metrics = {}
        if eval_batches is not None and tc.eval_steps:
          required = eval_hook is None
          eval_metrics = _eval(eval_step, state.params, eval_batches(), tc.eval_steps, mesh, tc.loss, required)
        if eval_hook is not None:
          eval_metrics.update(_hooked(eval_hook(state.params)))
        writer.write_scalars(step_done, {f"eval_{k}": v for k, v in eval_metrics.items()})
        if is_chief:
          metrics_lib.append_jsonl(metrics_path, {"step": step_done, "split": "eval", **eval_metrics})
        summary["final_eval_loss"] = eval_metrics.get("loss")
        summary["final_eval"] = eval_metrics
        report_progress(step_done)
        report(eval_line(step_done, eval_metrics))
        data_line = counters.summary(counters.snapshot())
        report(data_line)
        window_start, window_steps = time.perf_counter(), 0
      preempted = preemption.reached(step_done, manager)
      if preempted or step_done == tc.num_steps or manager.should_save(step_done):
        report_progress(step_done)
        finite.check(manager, step_done, state.params)  # a non-finite state is never saved
        checkpoints.save(manager, state, model_config, data_iterator=data_iterator, step=step_done, force=True)
      summary["steps"] = step_done
      if preempted:
        checkpoints.wait_for_saves(manager)
        log.warning(
          "preempted at step %d: checkpoint saved in %s; rerun the same command to resume", step_done, model_dir
        )
        summary["preempted"] = True
        break
  finally:
    preemption.close()
    bar.close()
    try:
      checkpoints.wait_for_saves(manager)
    finally:
      manager.close()
    writer.flush()
    writer.close()
  if is_chief:
    metrics_lib.plot_loss_curve(metrics_lib.read_jsonl(metrics_path), os.path.join(model_dir, LOSS_CURVE_FILE))
    if counters.summary(counters.snapshot()) != data_line:  # what the pipeline skipped, at the end too
      log.info(counters.summary(counters.snapshot()))
  summary["seconds"] = time.perf_counter() - started
  summary["state"] = state
  return summary

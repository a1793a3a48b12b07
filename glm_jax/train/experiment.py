"""An experiment (model, training, optimizer, mesh and data configs) and the `train` command's work on it.

    summary = experiment.train(model_dir, Experiment(model, train, optimizer, mesh, data))

Before anything is compiled or read: the model_dir must be writable and not in use by another run (its lease,
glm_jax/train/lease.py), the data's vocabulary must fit the model and be the checkpoint's own (the model_dir's when
it resumes, `TrainConfig.init_checkpoint`'s when it starts from one), and the data's vocabulary is kept with the
model_dir (glm_jax/train/checkpoints.py). Then the seqio pipelines of `data` feed glm_jax/train/loop.py.

What a resume keeps (model_dir/run_config.json records the run's model, data and schedule at its start):
- A change of the model's shape or of the data (any GLMConfig field but the compute choices in
  `_COMPUTE_FIELDS`; any DataConfig field but eval_split and checkpoint_input) is refused, naming every changed
  field, unless `allow_config_change` (the record then takes the new values). A new device or host count resumes.
- The learning-rate schedule spans the steps it started with: raising num_steps trains on at the schedule's end;
  binding TrainConfig.schedule_steps asks for another span.
- Each start's operative config is model_dir/operative_config.gin; one that differs from the earlier start's moves
  that one aside to operative_config.until_step_<N>.gin (N: the step it trained to), never overwriting it; so
  does run_config.json after an allowed change. (Each checkpoint step also holds the model config it was saved
  with.)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable

import jax
from etils import epath

from glm_jax.model import GLMConfig
from glm_jax.train import checkpoints, inputs, lease, loop, optimizer, partitioning

log = logging.getLogger(__name__)

OPERATIVE_CONFIG_FILE = "operative_config.gin"
RUN_CONFIG_FILE = "run_config.json"
# How the model computes, not what it is: free to change at resume.
_COMPUTE_FIELDS = ("dtype", "attention_implementation", "remat_policy")
_DATA_FREE_FIELDS = ("eval_split", "checkpoint_input")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a training run is configured by (gin builds it: glm_jax/gin_config.py)."""

  model: GLMConfig
  train: loop.TrainConfig
  optimizer: optimizer.OptimizerConfig
  mesh: partitioning.MeshConfig
  data: inputs.DataConfig


def check_data_vocabulary(model_dir: str, exp: Experiment) -> object:
  """The data's vocabulary, once it is known to fit the model and to be the one of the checkpoint the run continues:
  the model_dir's own when it holds a checkpoint, else `init_checkpoint`'s (if set). Raises otherwise."""
  vocabulary = inputs.vocabulary(exp.data)
  inputs.check_fits_model(exp.data, exp.model.vocab_size)
  if checkpoints.latest_step(model_dir) is not None:
    checkpoints.check_vocabulary(model_dir, vocabulary)
  elif exp.train.init_checkpoint:
    checkpoints.check_vocabulary(exp.train.init_checkpoint, vocabulary)
  return vocabulary


def _run_record(exp: Experiment) -> dict:
  return {
    "model": dataclasses.asdict(exp.model),
    "data": dataclasses.asdict(exp.data),
    "schedule_steps": exp.train.total_schedule_steps,
  }


def _changes(kind: str, before: dict, now: dict, free: tuple[str, ...]) -> list[str]:
  return [f"{kind}.{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in now if k not in free and before.get(k) != now[k]]


def check_resume(model_dir: str, exp: Experiment, allow_config_change: bool = False) -> Experiment:
  """`exp` as a resume of `model_dir` runs it (its schedule's span fixed from the record); raises ValueError naming
  every changed model or data field (unless `allow_config_change`). A model_dir without a checkpoint starts anew."""
  path = epath.Path(model_dir) / RUN_CONFIG_FILE
  step = checkpoints.latest_step(model_dir)
  record = json.loads(path.read_text()) if path.exists() else None
  if step is None or record is None:
    if step is not None:  # a model_dir from before the record: the checkpoint's own model config is the record
      record = {"model": dataclasses.asdict(checkpoints.load_model_config(model_dir)), "data": None}
    else:
      return exp
  now = _run_record(exp)
  changes = _changes("GLMConfig", record["model"], now["model"], _COMPUTE_FIELDS)
  if record.get("data") is not None:
    changes += _changes("DataConfig", record["data"], now["data"], _DATA_FREE_FIELDS)
  if changes and not allow_config_change:
    raise ValueError(
      f"{model_dir} holds a run (step {step}) with another configuration: {'; '.join(changes)}. Resume it with its "
      f"own bindings ({OPERATIVE_CONFIG_FILE} there), train in a new --model_dir, or pass --allow_config_change"
    )
  if changes:
    log.warning("resuming %s with a changed configuration (--allow_config_change): %s", model_dir, "; ".join(changes))
  started = record.get("schedule_steps")
  tc = exp.train
  if started and tc.schedule_steps is None and started != tc.num_steps:
    log.info(
      "num_steps is %d, the run started with %d: the learning-rate schedule keeps its %d steps (bind "
      "TrainConfig.schedule_steps=%d to stretch it)", tc.num_steps, started, started, tc.num_steps,
    )  # fmt: skip
    exp = dataclasses.replace(exp, train=dataclasses.replace(tc, schedule_steps=started))
  return exp


def _keep_earlier(model_dir: str, name: str, text: str, step: int | None) -> None:
  """Writes model_dir/name (e.g. operative_config.gin); an earlier start's that differs is moved aside to
  <stem>.until_step_<N><suffix> (N: `step`, the newest checkpoint's, which it trained to), never overwritten. Runs
  on process 0 alone, so it reads no checkpoint itself (orbax's managers synchronize all processes)."""
  path = epath.Path(model_dir) / name
  if path.exists() and path.read_text() != text:
    step = step or 0
    stem, suffix = name.rsplit(".", 1)
    target, n = path.parent / f"{stem}.until_step_{step}.{suffix}", 1
    while target.exists():
      target, n = path.parent / f"{stem}.until_step_{step}.{n}.{suffix}", n + 1
    path.rename(target)
    log.info("the earlier %s is kept as %s", name, target)
  path.write_text(text)  # local or gs://


def _keep_operative_config(model_dir: str, text: str, step: int | None = None) -> None:
  _keep_earlier(model_dir, OPERATIVE_CONFIG_FILE, text, step)


def train(
  model_dir: str,
  exp: Experiment,
  *,
  operative_config: Callable[[], str] | None = None,
  progress: bool = True,
  allow_config_change: bool = False,
  break_lock: bool = False,
  eval_hook: Callable | None = None,
) -> dict:
  """Trains `exp.model` on the seqio Task/Mixture of `exp.data` in `model_dir` (resuming it); see loop.train.

  `operative_config`, if given, returns the configuration text to keep as model_dir/operative_config.gin once the
  pipelines are built (gin's operative config: the bindings the run used). Raises RuntimeError when another run
  holds model_dir (`break_lock` takes it over), ValueError on a changed configuration at resume (see the module
  docstring; `allow_config_change` lets it proceed). `eval_hook` (params -> `cloze_*` metrics) runs at every
  evaluation too (loop.train)."""
  checkpoints.ensure_writable(model_dir)  # before any data is read or anything compiled
  with lease.Lease(model_dir, break_lock=break_lock):
    exp = check_resume(model_dir, exp, allow_config_change)
    tc, data = exp.train, exp.data
    vocabulary = check_data_vocabulary(model_dir, exp)
    checkpoints.save_vocabulary(model_dir, vocabulary)
    train_batches = inputs.batches(
      data,
      data.train_split,
      tc.batch_size,
      tc.length,
      repeat=True,
      shuffle=data.shuffle,
      checkpointable=data.checkpoint_input,
    )
    eval_batches = None
    if data.eval_split:

      def eval_batches():
        return inputs.eval_batches(data, data.eval_split, tc.batch_size, tc.length)

    step = checkpoints.latest_step(model_dir)  # on every process: orbax's managers synchronize them
    if jax.process_index() == 0:
      _keep_earlier(model_dir, RUN_CONFIG_FILE, json.dumps(_run_record(exp), indent=2), step)
      if operative_config is not None:
        _keep_operative_config(model_dir, operative_config(), step)
    log.info("training %s on %s in %s", _describe(exp.model), data.mixture_or_task_name, model_dir)
    return loop.train(exp.model, tc, exp.optimizer, exp.mesh, train_batches, model_dir, eval_batches,
                      progress=progress, eval_hook=eval_hook)  # fmt: skip


def _describe(config: GLMConfig) -> str:
  return (
    f"GLM ({config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads, "
    f"{config.vocab_size} vocabulary rows)"
  )


def format_summary(summary: dict, model_dir: str) -> str:
  """The line `train` ends with: steps, time, first and last losses, where the checkpoints are."""
  if summary["preempted"]:
    return f"preempted at step {summary['steps']}: checkpoint saved in {model_dir}; rerun the command to resume"
  if summary["first_loss"] is None:  # num_steps=0 (the untrained model, saved as step 0), or a finished run resumed
    losses = ["no step to train"]
  else:
    losses = [f"loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}"]
  if summary["final_eval_loss"] is not None:
    losses.append(f"eval loss {summary['final_eval_loss']:.3f}")
  final_eval = summary.get("final_eval") or {}
  hooked = {k: v for k, v in final_eval.items() if k.startswith(loop.HOOK_PREFIX) and not k.endswith("examples")}
  losses += [f"{k} {v:.3f}" for k, v in hooked.items()]  # (not the counts of examples)
  return (
    f"trained to step {summary['steps']} in {summary['seconds']:.0f} s: {', '.join(losses)}; checkpoints in {model_dir}"
  )

"""The `eval` command's work: a checkpoint's loss and accuracy on an experiment's eval split, and cloze accuracy."""

from __future__ import annotations

import logging

import jax

from glm_jax.data import superglue
from glm_jax.eval import cloze as cloze_eval, superglue as superglue_eval
from glm_jax.model import GLM
from glm_jax.train import checkpoints, inputs, loop, partitioning
from glm_jax.train.experiment import Experiment

log = logging.getLogger(__name__)


def _has_loss_rows(registered: superglue.RegisteredTask, split: str) -> bool:
  pattern, multi_token = registered.settings()
  examples = registered.examples(split)
  return any(superglue.cloze(registered.task, ex, pattern, multi_token).label is not None for ex in examples)


def evaluate(checkpoint: str, exp: Experiment, cloze_examples: int | None = None) -> dict[str, float]:
  """Loss and accuracy of `checkpoint`'s params on `exp.train.eval_steps` batches of the experiment's eval split
  (its data, batch size and length; the model is `exp.model`, which must fit the checkpoint, and the data's
  vocabulary must be the checkpoint's own): the batches the training loop evaluates on, so a run's final checkpoint
  gives its final eval loss again.

  With `cloze_examples` (a cloze Task, glm_jax.data.cloze), also the classification accuracy on the first
  `cloze_examples` examples of the split (0: all), predicting the verbalizer the model finds most likely; for a
  SuperGLUE Task (tasks/superglue.py), SuperGLUE's metrics of its candidates (glm_jax.eval.superglue), as
  `cloze_<metric>`."""
  tc, data = exp.train, exp.data
  if not data.eval_split:
    raise ValueError("the experiment has no eval split: bind DataConfig.eval_split (e.g. 'validation')")
  template = None
  registered = superglue.REGISTERED.get(data.mixture_or_task_name)
  if cloze_examples is not None:
    if registered is None:
      template = cloze_eval.task_template(data.mixture_or_task_name)
    if jax.process_count() > 1:
      raise ValueError("eval --cloze scores on one host: run it as one process (the loss eval runs on many)")
  vocabulary = inputs.vocabulary(data)
  inputs.check_fits_model(data, exp.model.vocab_size)
  checkpoints.check_vocabulary(checkpoint, vocabulary)
  batches = inputs.batches(data, data.eval_split, tc.batch_size, tc.length, repeat=True, shuffle=False)
  model, mesh = GLM(exp.model), partitioning.make_mesh(exp.mesh)
  params, shardings = loop.restore_sharded_params(model, checkpoint, mesh, tc.length)
  if registered is not None and not _has_loss_rows(registered, data.eval_split):
    # ReCoRD's and WSC's validation examples (and any test split) have no single right candidate, so no loss rows
    # (seqio repeats the source before the rows are filtered: reading them would never end). Their candidates are
    # still scored with --cloze.
    log.info("no loss on %s's %s split: no example has one right candidate", data.mixture_or_task_name, data.eval_split)
    result = {}
  else:
    result = loop.evaluate(model, params, shardings, mesh, batches, tc.eval_steps, tc.loss)
  if template is not None:
    examples = cloze_eval.task_examples(data.mixture_or_task_name, data.eval_split, cloze_examples)
    scored = cloze_eval.cloze_accuracy(model, jax.device_get(params), vocabulary, template, examples)
    result.update(cloze_accuracy=scored["accuracy"], cloze_examples=scored["num_examples"])
  elif cloze_examples is not None:  # a SuperGLUE Task: its candidates scored, SuperGLUE's metrics
    examples = registered.examples(data.eval_split)
    pattern, multi_token = registered.settings()
    scored = superglue_eval.evaluate(
      model,
      jax.device_get(params),
      vocabulary,
      registered.task,
      examples[:cloze_examples] if cloze_examples else examples,
      pattern_id=pattern,
      multi_token=multi_token,
    )
    result.update({f"cloze_{k}": v for k, v in scored.items()})
  return result

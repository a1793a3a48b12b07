"""The `eval` command's work: a checkpoint's loss and accuracy on an experiment's eval split, and cloze accuracy."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import seqio

from glm_jax.data import feature_converter, language_model, seq2seq, superglue, vocab
from glm_jax.eval import (
  cloze as cloze_eval,
  language_model as lm_eval,
  seq2seq as seq2seq_eval,
  superglue as superglue_eval,
)
from glm_jax.infer import decode
from glm_jax.model import GLM
from glm_jax.train import checkpoints, inputs, loop, partitioning
from glm_jax.train.experiment import Experiment

log = logging.getLogger(__name__)


def cloze_metrics(exp: Experiment, split: str, cloze_examples: int) -> Callable[[Any], dict[str, float]]:
  """params -> the `cloze_*` metrics of the experiment's cloze Task on the first `cloze_examples` examples of `split`
  (0: all): for a SuperGLUE Task (tasks/superglue.py) SuperGLUE's metrics of its candidates
  (glm_jax.eval.superglue), for another cloze Task (glm_jax.data.cloze) the accuracy of its verbalizers. The
  examples are read once. The params are scored where they lie (on their mesh, split over its data x fsdp devices,
  on one process or many: glm_jax.infer.scoring), every process scoring all the examples together. Raises ValueError
  for a Task that is not a cloze Task."""
  name = exp.data.mixture_or_task_name
  model, vocabulary = GLM(exp.model), inputs.vocabulary(exp.data)
  registered = superglue.REGISTERED.get(name)
  if registered is not None:
    examples = registered.examples(split)
    examples = examples[:cloze_examples] if cloze_examples else examples
    pattern, multi_token = registered.settings()

    def superglue_metrics(params) -> dict[str, float]:
      scored = superglue_eval.evaluate(
        model, params, vocabulary, registered.task, examples, pattern_id=pattern,
        multi_token=multi_token,
      )  # fmt: skip
      return {f"cloze_{k}": v for k, v in scored.items()}

    return superglue_metrics
  template = cloze_eval.task_template(name)
  examples = list(cloze_eval.task_examples(name, split, cloze_examples))

  def template_metrics(params) -> dict[str, float]:
    scored = cloze_eval.cloze_accuracy(model, params, vocabulary, template, examples)
    return {"cloze_accuracy": scored["accuracy"], "cloze_examples": scored["num_examples"]}

  return template_metrics


def training_hook(exp: Experiment, cloze_examples: int | None) -> Callable[[Any], dict[str, float]] | None:
  """The evaluation `train` runs at every `eval_every` besides the loss (loop.train's eval_hook): the cloze metrics
  of the eval split (`cloze_metrics`) for a SuperGLUE Task always (all its examples unless `cloze_examples`), for
  another cloze Task with `cloze_examples`; None without an eval split or for other Tasks."""
  name = exp.data.mixture_or_task_name
  if name not in superglue.REGISTERED and cloze_examples is None:
    return None
  if not exp.data.eval_split:
    if cloze_examples is not None:
      raise ValueError("train --cloze evaluates the eval split: bind DataConfig.eval_split (e.g. 'validation')")
    return None
  return cloze_metrics(exp, exp.data.eval_split, cloze_examples or 0)


@dataclasses.dataclass(frozen=True)
class GenerateEval:
  """`eval --generate`: decode the first `examples` examples of a seq2seq Task's eval split (0: all), `batch_size`
  a call, score ROUGE `rouge_style` ("plain" or "reference": glm_jax.eval.seq2seq) and write the predictions to
  `predictions` (a jsonl path)."""

  examples: int
  predictions: str
  rouge_style: str = "plain"
  batch_size: int = 8

  def __post_init__(self):
    if self.rouge_style not in ("plain", "reference"):
      raise ValueError(f"rouge_style={self.rouge_style!r}: expected plain or reference")
    if self.examples < 0 or self.batch_size < 1:
      raise ValueError(f"--generate={self.examples} must be >= 0 (0: all) and the batch size >= 1")


def _family(vocabulary) -> str | None:
  inner = vocabulary.vocabulary if isinstance(vocabulary, vocab.LazyVocabulary) else vocabulary
  form = getattr(inner, "saved_form", None)
  return form[0] if form else None


def generation_metrics(exp: Experiment, split: str, settings: GenerateEval) -> Callable[[Any], dict[str, float]]:
  """params -> ROUGE-1/2/L (rouge1, rouge2, rougeL) of the summaries the model decodes for the experiment's seq2seq
  Task (glm_jax.eval.seq2seq: each example's Part A as training made it, beam search with the reference's settings
  for the dataset), and generated_examples; the predictions are written to `settings.predictions` (by process 0:
  every process passes all the examples to glm_jax.infer.generate, which decodes them together on the params' mesh).
  The reference's ROUGE picks its fix-up as the reference does: PTB for a BERT-WordPiece tokenizer, else gigaword's
  for Gigaword, else none. Raises ValueError for a Task that is not a seq2seq Task."""
  name = exp.data.mixture_or_task_name
  registered = seq2seq.REGISTERED.get(name)
  if registered is None:
    raise ValueError(
      f"eval --generate decodes a seq2seq Task; {name!r} is not one (registered: {sorted(seq2seq.REGISTERED)})"
    )
  pairs = registered.pairs(split)
  pairs = pairs[: settings.examples] if settings.examples else pairs
  if not pairs:
    raise ValueError(f"{name}'s {split} split has no examples to decode")
  mask, max_src_length, max_tgt_length = registered.settings()
  model, vocabulary = GLM(exp.model), inputs.vocabulary(exp.data)
  options = seq2seq_eval.decode_options(registered.dataset, max_tgt_length, **registered.decode())
  sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
  style = None
  if settings.rouge_style == "reference":
    style = "ptb" if _family(vocabulary) == "bert" else "gigaword" if registered.dataset == "gigaword" else "none"
    targets = seq2seq_eval.references_as_tokenized(targets, vocabulary)

  def metrics(params) -> dict[str, float]:
    chief = jax.process_index() == 0
    predicted = seq2seq_eval.summarize(model, params, vocabulary, sources, mask=mask, max_src_length=max_src_length,
                                       options=options, batch_size=settings.batch_size, progress=chief)  # fmt: skip
    if chief:  # every process decoded every example
      seq2seq_eval.write_predictions(settings.predictions, sources, predicted, targets)
      log.info("%d predictions of %s's %s split in %s", len(predicted), name, split, settings.predictions)
    return {**seq2seq_eval.rouge(predicted, targets, style=style), "generated_examples": float(len(predicted))}

  return metrics


def lm_metrics(exp: Experiment, split: str, examples: int, progress: bool = True) -> Callable[[Any], dict[str, float]]:
  """params -> the zero-shot LM metrics of the experiment's LM Task (glm_jax.data.language_model.REGISTERED) on the
  first `examples` rows of `split` (0: all): LAMBADA's accuracy, or perplexity (adjusted too when every row is
  scored). The rows are the Task's, made with the blank of the model (`exp.model.task_mask`) unless
  language_model_config.mask names one, `exp.train.batch_size` at a time in TrainConfig.length; every process
  scores all of them (glm_jax.eval.language_model). Raises ValueError for a Task that is not an LM Task."""
  name = exp.data.mixture_or_task_name
  registered = language_model.REGISTERED.get(name)
  if registered is None:
    raise ValueError(
      f"eval --lm scores a zero-shot LM Task; {name!r} is not one (registered: {sorted(language_model.REGISTERED)})"
    )
  model, length, batch_size = GLM(exp.model), exp.train.length, exp.train.batch_size

  def rows():
    with language_model.model_mask(exp.model.task_mask):  # the Task's preprocessors read it while the dataset is made
      ds = seqio.get_dataset(
        name,
        task_feature_lengths=feature_converter.task_feature_lengths(length),
        dataset_split=split,
        shuffle=False,
        num_epochs=1,
        feature_converter=feature_converter.GLMFeatureConverter(pack=False),
      )  # every process reads every row: the rows are placed as global arrays
    rows = ds.as_numpy_iterator()
    return itertools.islice(rows, examples) if examples else rows

  def metrics(params) -> dict[str, float]:
    devices = decode.batch_devices(decode.mesh_of(params))
    stats = lm_eval.row_stats(model, params, lm_eval.batches(rows(), batch_size, devices), progress=progress)
    if registered.kind == "lambada":
      return lm_eval.lambada_metrics(stats)
    original = registered.original_words(split) if not examples else None  # a partial text has no token ratio
    return lm_eval.perplexity_metrics(stats, original)

  return metrics


def default_predictions_path(checkpoint: str, exp: Experiment) -> str:
  """Where `eval --generate` writes its predictions unless told: beside the checkpoint's steps."""
  return os.path.join(checkpoint, f"predictions.{exp.data.mixture_or_task_name}.{exp.data.eval_split}.jsonl")


def evaluate(
  checkpoint: str,
  exp: Experiment,
  cloze_examples: int | None = None,
  generation: GenerateEval | None = None,
  lm_examples: int | None = None,
) -> dict[str, float]:
  """Loss and accuracy of `checkpoint`'s params on `exp.train.eval_steps` batches of the experiment's eval split
  (its data, batch size and length; the model is `exp.model`, which must fit the checkpoint, and the data's
  vocabulary must be the checkpoint's own): the batches the training loop evaluates on, so a run's final checkpoint
  gives its final eval loss again.

  With `cloze_examples` (a cloze Task), also the cloze metrics of the first `cloze_examples` examples of the split
  (0: all; `cloze_metrics`), as `cloze_<metric>`; a split with no loss rows (ReCoRD's validation examples have no
  one right candidate; test splits) then gives those alone, as does `TrainConfig.eval_steps=0` (the training
  recipes' setting for a split whose rows do not fit the training layout, e.g. WSC's).

  With `generation` (a seq2seq Task), also the ROUGE of the summaries decoded for the split (`generation_metrics`),
  on one process or many (each decodes every example with the params where they lie; process 0 writes them).

  With `lm_examples` (a zero-shot LM Task: LAMBADA, WikiText), also its accuracy or perplexity on the first
  `lm_examples` rows of the split (0: all; `lm_metrics`), on one process or many."""
  tc, data = exp.train, exp.data
  if not data.eval_split:
    raise ValueError("the experiment has no eval split: bind DataConfig.eval_split (e.g. 'validation')")
  given = (("--cloze", cloze_examples), ("--generate", generation), ("--lm", lm_examples))
  modes = [flag for flag, value in given if value is not None]
  if len(modes) > 1:
    raise ValueError(f"eval takes one of --cloze (a cloze Task), --generate (seq2seq), --lm (an LM Task): {modes}")
  if lm_examples is not None and lm_examples < 0:
    raise ValueError(f"--lm={lm_examples} must be >= 0 (0: all)")
  if not tc.eval_steps and not modes:
    raise ValueError(
      "TrainConfig.eval_steps=0 evaluates no loss: pass --cloze=N, --generate=N or --lm=N, or bind eval_steps to at "
      "least 1"
    )
  metrics = None
  if cloze_examples is not None:
    metrics = cloze_metrics(exp, data.eval_split, cloze_examples)
  elif generation is not None:
    metrics = generation_metrics(exp, data.eval_split, generation)
  elif lm_examples is not None:
    metrics = lm_metrics(exp, data.eval_split, lm_examples, progress=jax.process_index() == 0)
  vocabulary = inputs.vocabulary(data)
  inputs.check_fits_model(data, exp.model.vocab_size)
  checkpoints.check_vocabulary(checkpoint, vocabulary)
  model, mesh = GLM(exp.model), partitioning.make_mesh(exp.mesh)
  params, shardings = loop.restore_sharded_params(model, checkpoint, mesh, tc.length)
  result = {}
  if tc.eval_steps:
    batches = inputs.eval_batches(data, data.eval_split, tc.batch_size, tc.length)
    result = loop.evaluate(model, params, shardings, mesh, batches, tc.eval_steps, tc.loss, required=metrics is None)
    if not result:
      log.info("no loss on %s's %s split: it gives no loss rows", data.mixture_or_task_name, data.eval_split)
  if metrics is not None:
    result.update(metrics(params))
  return result

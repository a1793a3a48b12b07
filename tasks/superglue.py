"""SuperGLUE (and SST-2) fine-tuning Tasks in the THUDM reference's cloze formulation (glm_jax.data.superglue).

Tasks `glm_{task}_superglue` for boolq, cb, copa, multirc, record, rte, wic, wsc and sst2, with the pretraining Tasks'
features and vocabulary (so `train` fine-tunes on them unchanged, e.g. from a converted checkpoint's model.gin) and
`eval --cloze` scoring every candidate with SuperGLUE's metrics (glm_jax.eval.superglue).

Data (read when a dataset is made):
  superglue_config.data_dir (default $GLM_JAX_SUPERGLUE_DIR): the SuperGLUE distribution unzipped,
    `<dir>/BoolQ/train.jsonl`, ... (SST-2: GLUE's `<dir>/SST-2/{train,dev,test}.tsv`; WSC with its candidates:
    `<dir>/WSC-negative/`, the reference's recipe's files, when `superglue_config.wsc_negative`);
  without one, the TFDS datasets `super_glue/<task>` (`glue/sst2`) prepared under $TFDS_DATA_DIR.
Gin: superglue_config.pattern_ids = {'boolq': 0} (per task; default glm_jax.data.superglue.DEFAULT_PATTERNS, the
  reference's scripts' choice), .multi_token = True (multi-token verbalizers for every task), .wsc_negative.
Rows: Part A is the filled pattern ([CLS] ... [eos]).
  superglue_config.loss = 'generative' (default): Part B the right candidate ([sop] + its tokens, targets + [eop]),
    trained with the LM loss (the reference's --loss-func generative); packs like pretraining rows.
  superglue_config.loss = 'cross_entropy' (the reference's default): one row per candidate (Part B: [sop] + the
    candidate; a single-token verbalizer is read at [sop], a multi-token candidate scores its [eop] too), all of an
    example's rows in one element with `cloze_candidate` and `cloze_label`; train it with `DataConfig.pack = False`,
    `DataConfig.candidates = C` and `LossConfig.cloze_candidates = C` (C: the task's most candidates; batch size a
    multiple of C).
Examples without a right candidate (test splits, WSC "False" examples) are skipped and counted
(`superglue/<task>/unlabelled`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import gin
import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data import counters, example as example_lib, superglue, superglue_sources
from glm_jax.data.example import DTYPES, FEATURES, SpecialIds
from glm_jax.data.feature_converter import CLOZE_FEATURES
from tasks import pretrain

TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "sst2")
SPLITS = ("train", "validation", "test")
TFDS_NAMES = {task: f"super_glue/{task}" for task in TASKS if task != "sst2"} | {"sst2": "glue/sst2"}


LOSSES = ("generative", "cross_entropy")


@gin.configurable
def superglue_config(
  data_dir: str | None = None,
  pattern_ids: dict | None = None,
  multi_token: bool = False,
  wsc_negative: bool = True,
  loss: str = "generative",
) -> dict:
  """Where the SuperGLUE data is and how it is rendered (see the module docstring)."""
  if loss not in LOSSES:
    raise ValueError(f"superglue_config.loss={loss!r}; expected one of {LOSSES}")
  patterns = {**superglue.DEFAULT_PATTERNS, **(pattern_ids or {})}
  for task, pattern in patterns.items():
    if task not in superglue.PATTERNS or pattern not in superglue.PATTERNS[task]:
      raise ValueError(
        f"superglue_config.pattern_ids: {task}={pattern} is not one of the reference's patterns "
        f"{dict(superglue.PATTERNS)}"
      )
  return {
    "data_dir": os.environ.get("GLM_JAX_SUPERGLUE_DIR") or None if data_dir is None else data_dir,
    "patterns": patterns,
    "multi_token": multi_token,
    "wsc_negative": wsc_negative,
    "loss": loss,
  }


def load_examples(task: str, split: str) -> list[superglue_sources.SuperGlueExample]:
  """The reference's examples of a split, from `superglue_config.data_dir`, else from TFDS."""
  config = superglue_config()
  if config["data_dir"]:
    task_dir = superglue_sources.WSC_NEGATIVE_DIR if task == "wsc" and config["wsc_negative"] else None
    return superglue_sources.read_examples(task, config["data_dir"], split, task_dir=task_dir)
  import tensorflow_datasets as tfds

  try:
    rows = tfds.as_numpy(tfds.load(TFDS_NAMES[task], split=split, download=False))
  except Exception as e:  # TFDS raises several types for a dataset that is not prepared
    raise FileNotFoundError(
      f"{TFDS_NAMES[task]} is not prepared in TFDS ({type(e).__name__}); bind superglue_config.data_dir (or set "
      f"$GLM_JAX_SUPERGLUE_DIR) to the unzipped SuperGLUE distribution, or run `tfds build {TFDS_NAMES[task]}`"
    ) from None
  return [ex for row in rows for ex in superglue_sources.from_tfds(task, row, split=split)]


def _serialized_examples(task: str, split: str) -> list[str]:
  return [json.dumps(dataclasses.asdict(ex)) for ex in load_examples(task, split)]


def cloze_preprocessor(dataset, sequence_length, output_features, *, task: str):
  """Examples -> GLM rows: Part B the right candidate (the generative loss) or, with `superglue_config.loss =
  'cross_entropy'`, one row per candidate, all of an example's in one element (see the module docstring)."""
  if not sequence_length or "input_ids" not in sequence_length:
    raise ValueError(
      "the SuperGLUE Tasks need a sequence length: pass task_feature_lengths="
      "glm_jax.data.feature_converter.task_feature_lengths(L) to seqio.get_dataset"
    )
  vocabulary = output_features["input_ids"].vocabulary
  ids = SpecialIds.from_vocabulary(vocabulary)
  length = int(sequence_length["input_ids"])
  config = superglue_config()
  pattern, multi_token = config["patterns"][task], config["multi_token"]
  names = (*FEATURES, *CLOZE_FEATURES)
  out_types = [tf.as_dtype(DTYPES.get(name, np.int32)) for name in names]

  def generative(question) -> list[dict[str, np.ndarray]]:
    fill = list(vocabulary.encode(question.candidates[question.label]))
    part_a, blank, cut = superglue.part_a_ids(question, vocabulary, ids, length, 1 + len(fill))
    counters.increment(f"superglue/{task}/truncated", int(cut))
    return [example_lib.from_spans(part_a, [(blank, fill)], ids)]

  def cross_entropy(question) -> list[dict[str, np.ndarray]]:
    rows = []
    for part_a, blank, fill in superglue.render(question, vocabulary, ids, length):
      row = example_lib.from_spans(part_a, [(blank, fill)], ids)
      if not question.multi_token:  # one verbalizer token read at [sop]; its [eop] is not scored
        row = {name: values[:-1] for name, values in row.items()}
      rows.append(row)
    return rows

  def make(serialized):
    ex = superglue_sources.SuperGlueExample(**json.loads(serialized))
    question = superglue.cloze(task, ex, pattern, multi_token)
    if question.label is None:
      counters.increment(f"superglue/{task}/unlabelled")
      return tuple(np.zeros(0, t.as_numpy_dtype) for t in out_types)
    counters.increment(f"superglue/{task}/examples")
    rows = cross_entropy(question) if config["loss"] == "cross_entropy" else generative(question)
    for c, row in enumerate(rows):
      row["cloze_candidate"] = np.full(row["input_ids"].size, c, np.int32)
      row["cloze_label"] = np.full(row["input_ids"].size, question.label, np.int32)
    return tuple(
      np.concatenate([row[name] for row in rows]).astype(t.as_numpy_dtype) for name, t in zip(names, out_types)
    )

  def to_row(ex):
    features = tf.numpy_function(make, [ex["example"]], out_types, stateful=False)
    for values in features:
      values.set_shape([None])
    return dict(zip(names, features))

  rows = dataset.map(to_row, num_parallel_calls=tf.data.AUTOTUNE)
  return rows.filter(lambda row: tf.size(row["input_ids"]) > 0)


def output_features() -> dict[str, seqio.Feature]:
  """The pretraining Tasks' features plus the cloze ones (candidate index, right candidate)."""
  return {
    **pretrain.output_features(),
    **{name: seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, dtype=tf.int32) for name in CLOZE_FEATURES},
  }


def _settings(task: str) -> tuple[int, bool]:
  config = superglue_config()
  return config["patterns"][task], config["multi_token"]


def task_name(task: str) -> str:
  return f"glm_{task}_superglue"


for _task in TASKS:
  seqio.TaskRegistry.add(
    task_name(_task),
    source=pretrain.SerializedSource(functools.partial(_serialized_examples, _task), SPLITS),
    output_features=output_features(),
    preprocessors=[functools.partial(cloze_preprocessor, task=_task)],
  )
  superglue.REGISTERED[task_name(_task)] = superglue.RegisteredTask(
    _task, functools.partial(load_examples, _task), functools.partial(_settings, _task)
  )

"""Summarization fine-tuning Tasks in the THUDM reference's seq2seq formulation (glm_jax.data.seq2seq).

Tasks `glm_{cnn_dailymail,xsum,gigaword}_seq2seq`, with the pretraining Tasks' features and vocabulary (so `train`
fine-tunes on them unchanged, e.g. from a converted checkpoint's model.gin); `register_seq2seq_task(name, directory)`
adds one over any dataset in the reference's plain-text layout.

Data (read when a dataset is made):
  seq2seq_config.data_dir (default $GLM_JAX_SEQ2SEQ_DIR): a root holding `<dataset>/{train,val,test}.source` and
    `.target`, one example a line (the reference's layout);
  without one, the TFDS datasets `cnn_dailymail`, `xsum`, `gigaword` prepared under $TFDS_DATA_DIR.
Gin: seq2seq_config.mask: the blank, '[sMASK]' for a model trained with the task mask (GLMConfig.task_mask: GLM-2B,
  GLM-10B, the Chinese models, and glm-jax's own), '[MASK]' otherwise (GLM-Large and the other English GLM-Base/Large
  models); no default: a wrong blank trains silently worse. .max_src_length / .max_tgt_length: default the
  reference's for the dataset (glm_jax.data.seq2seq.DATASETS). The row length (TrainConfig.length) must hold both.
  .decode: glm_jax.infer.DecodeOptions fields for `eval --generate`, over the reference's beam search for the
  dataset (glm_jax.eval.seq2seq.decode_options; a dataset of your own: beam search, spans up to max_tgt_length).
Sources and targets cut to fit are counted (`seq2seq/<name>/source_cut`, `target_cut`), skipped lines too.
"""

from __future__ import annotations

import functools
import json
import os

import gin
import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data import counters, seq2seq
from glm_jax.data.example import DTYPES, FEATURES, SpecialIds
from tasks import pretrain

DATASETS = tuple(seq2seq.DATASETS)


@gin.configurable
def seq2seq_config(
  data_dir: str | None = None,
  mask: str | None = None,
  max_src_length: int | None = None,
  max_tgt_length: int | None = None,
  decode: dict | None = None,
) -> dict:
  """Where the data is and how the rows are made (see the module docstring)."""
  if mask is not None and mask not in seq2seq.MASKS:
    raise ValueError(f"seq2seq_config.mask={mask!r}: expected one of {seq2seq.MASKS}")
  return {
    "data_dir": os.environ.get("GLM_JAX_SEQ2SEQ_DIR") or None if data_dir is None else data_dir,
    "mask": mask,
    "max_src_length": max_src_length,
    "max_tgt_length": max_tgt_length,
    "decode": dict(decode or {}),
  }


def lengths(dataset: str) -> tuple[int, int]:
  """(max_src_length, max_tgt_length) of a dataset: seq2seq_config's, else the reference's."""
  config, reference = seq2seq_config(), seq2seq.DATASETS.get(dataset)
  src = config["max_src_length"] or (reference.max_src_length if reference else None)
  tgt = config["max_tgt_length"] or (reference.max_tgt_length if reference else None)
  if src is None or tgt is None:
    raise ValueError(f"{dataset}: bind seq2seq_config.max_src_length and .max_tgt_length (no reference setting)")
  return src, tgt


def mask() -> str:
  value = seq2seq_config()["mask"]
  if value is None:
    raise ValueError(
      "bind seq2seq_config.mask: '[sMASK]' for a model trained with the task mask (GLM-2B/10B, the Chinese models, "
      "glm-jax's own), '[MASK]' for GLM-Large and the other English Base/Large models"
    )
  return value


def load_pairs(dataset: str, split: str, directory: str | None = None) -> list[tuple[str, str]]:
  """(source, target) pairs of a split: from `directory` (a registered user dataset), from
  `<seq2seq_config.data_dir>/<dataset>/`, else from TFDS."""
  directory = directory or (
    os.path.join(seq2seq_config()["data_dir"], dataset) if seq2seq_config()["data_dir"] else None
  )
  if directory is not None:
    return seq2seq.read_plain_text(directory, split, dataset)
  import tensorflow_datasets as tfds

  info = seq2seq.DATASETS[dataset]
  try:
    rows = tfds.as_numpy(tfds.load(info.tfds_name, split=split, download=False))
  except Exception as e:  # TFDS raises several types for a dataset that is not prepared
    raise FileNotFoundError(
      f"{info.tfds_name} is not prepared in TFDS ({type(e).__name__}); bind seq2seq_config.data_dir (or set "
      f"$GLM_JAX_SEQ2SEQ_DIR) to a root with {dataset}/{{train,val,test}}.source and .target, or run "
      f"`tfds build {info.tfds_name}`"
    ) from None
  source, target = info.tfds_fields
  pairs = []
  for row in rows:
    # CNN/DailyMail's highlights hold one sentence a line: one line of text, as the reference's files do.
    s, t = (seq2seq.clean(row[k].decode().replace("\n", " "), dataset) for k in (source, target))
    if s and t:
      pairs.append((s, t))
    else:
      counters.increment(f"seq2seq/{dataset}/skipped")
  return pairs


def _serialized_pairs(dataset: str, directory: str | None, split: str) -> list[str]:
  return [json.dumps(pair) for pair in load_pairs(dataset, split, directory)]


def seq2seq_preprocessor(dataset, sequence_length, output_features, *, name: str):
  """(source, target) -> one GLM row (glm_jax.data.seq2seq.example)."""
  if not sequence_length or "input_ids" not in sequence_length:
    raise ValueError(
      "the seq2seq Tasks need a sequence length: pass task_feature_lengths="
      "glm_jax.data.feature_converter.task_feature_lengths(L) to seqio.get_dataset"
    )
  vocabulary = output_features["input_ids"].vocabulary
  ids = SpecialIds.from_vocabulary(vocabulary)
  blank, (src, tgt) = mask(), lengths(name)
  if src + tgt > int(sequence_length["input_ids"]):
    raise ValueError(
      f"{name}: rows of {sequence_length['input_ids']} tokens cannot hold max_src_length={src} + max_tgt_length="
      f"{tgt}: raise TrainConfig.length (and the model's max_length) or lower seq2seq_config's lengths"
    )
  out_types = [tf.as_dtype(DTYPES.get(f, np.int32)) for f in FEATURES]

  def make(serialized):
    source, target = json.loads(serialized)
    row, source_cut, target_cut = seq2seq.example(
      source, target, vocabulary, ids, mask=blank, max_src_length=src, max_tgt_length=tgt
    )
    counters.increment(f"seq2seq/{name}/examples")
    counters.increment(f"seq2seq/{name}/source_cut", int(source_cut))
    counters.increment(f"seq2seq/{name}/target_cut", int(target_cut))
    return tuple(row[f].astype(t.as_numpy_dtype) for f, t in zip(FEATURES, out_types))

  def to_row(ex):
    features = tf.numpy_function(make, [ex["example"]], out_types, stateful=False)
    for values in features:
      values.set_shape([None])
    return dict(zip(FEATURES, features))

  return dataset.map(to_row, num_parallel_calls=tf.data.AUTOTUNE)


def task_name(dataset: str) -> str:
  return f"glm_{dataset}_seq2seq"


def register_seq2seq_task(name: str, directory: str | None = None) -> str:
  """Registers `glm_<name>_seq2seq` over `directory` ({train,val,test}.source / .target; None: a reference dataset's
  data_dir or TFDS); returns the Task's name. Its lengths come from seq2seq_config (or the reference's for a
  reference dataset)."""
  seqio.TaskRegistry.add(
    task_name(name),
    source=pretrain.SerializedSource(functools.partial(_serialized_pairs, name, directory), seq2seq.SPLITS),
    output_features=pretrain.output_features(),
    preprocessors=[functools.partial(seq2seq_preprocessor, name=name)],
  )
  seq2seq.REGISTERED[task_name(name)] = seq2seq.RegisteredTask(
    name,
    functools.partial(load_pairs, name, directory=directory),
    functools.partial(_settings, name),
    lambda: seq2seq_config()["decode"],
  )
  return task_name(name)


def _settings(name: str) -> tuple[str, int, int]:
  return (mask(), *lengths(name))


for _dataset in DATASETS:
  register_seq2seq_task(_dataset)

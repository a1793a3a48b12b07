"""seqio input pipelines for the loop: process-local numpy batches of model features [rows, L].

Multi-host: every process asks seqio for its own shard, `seqio.ShardInfo(jax.process_index(),
jax.process_count())`, and batches `batch_size / process_count` rows; partitioning.global_batch assembles the
global batch from the processes' rows (`jax.make_array_from_process_local_data`, each process's rows on its own
devices). The document sources of glm_jax/data/sources.py shard by document index, process p of P reading
documents p, p + P, p + 2P, ... (TFDS sources with enough files shard by file instead).

So with P processes the global batch of step j holds exactly the rows of 1 process's step j (in another order;
the loss, a sum over tokens divided by their count, does not see the order) when the example stream is a
function of the document alone: `pack=False` (one example per row), `shuffle=False` (source order), one Task
(a Mixture samples), documents shorter than the row (one example each), a document count divisible by P (else
the epochs of the shards drift apart) and a corruption whose outcome does not depend on seqio's per-document
seeds, which seqio hands out by position in the (sharded) stream. tests/train/test_multihost.py trains that way
and matches the 1-process losses. A real run (packed, shuffled, random corruption) sees a different but equally
distributed stream for each host count.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Iterator

import jax
import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data import feature_converter


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """A registered seqio Task or Mixture (import its module first, e.g. `import tasks`) and its splits."""

  mixture_or_task_name: str = "glm_embedded"
  train_split: str = "train"
  eval_split: str | None = "validation"  # None: no evaluation
  pack: bool = True
  # The cloze layout of the cross-entropy loss (LossConfig.cloze_candidates): rows per example, unpacked.
  candidates: int | None = None
  shuffle: bool = True  # training stream only; False: source order
  seed: int = 0
  # Save the training iterator's position with every checkpoint (exact resume). The position includes the
  # shuffle and prefetch buffers; turn it off when they are too large to save at every checkpoint (a resumed
  # run then restarts its input stream).
  checkpoint_input: bool = True


def vocabulary(config: DataConfig) -> seqio.Vocabulary:
  """The vocabulary of the Task/Mixture's `input_ids` (the ids the model embeds)."""
  return seqio.get_mixture_or_task(config.mixture_or_task_name).output_features["input_ids"].vocabulary


def vocabulary_size(config: DataConfig) -> int:
  """The size of the vocabulary of the Task/Mixture's `input_ids`."""
  return vocabulary(config).vocab_size


def check_fits_model(config: DataConfig, model_vocab_size: int) -> None:
  """Raises ValueError when the data's token ids can exceed the model's vocabulary (an embedding lookup out of
  range would otherwise be clamped silently on accelerators)."""
  size = vocabulary_size(config)
  if size > model_vocab_size:
    raise ValueError(
      f"the vocabulary of {config.mixture_or_task_name!r} has {size} ids but the model's "
      f"vocab_size is {model_vocab_size}: use a Task with the model's own tokenizer (for the glm_* "
      f"Tasks of a checkpoint converted with --vocab_files: task_vocabulary.checkpoint = DIR, which its "
      f"model.gin binds) or a model with a larger vocab_size"
    )


class TFDataBatches:
  """Process-local numpy batches from a tf.data pipeline whose position can be saved and restored.

  It keeps the tf.data iterator itself (not `as_numpy_iterator`), which `tf.train.Checkpoint` can serialize:
  `save_position(prefix)` writes the position, buffered elements included, to `prefix.index` and
  `prefix.data-*`, and `restore_position(prefix)` puts the iterator at that position, so its next batch is the
  one the saved iterator would have yielded next. The loop saves it with every checkpoint
  (glm_jax.train.checkpoints.DataIteratorHandler).

  A pipeline that cannot be serialized (one with Python state, e.g. `Dataset.from_generator`) fails here, at
  construction, naming the fix, rather than at the first checkpoint.
  """

  def __init__(self, dataset: tf.data.Dataset, name: str = "the input pipeline"):
    options = tf.data.Options()
    options.deterministic = True  # a restored position must be followed by the same batches
    self._iterator = iter(dataset.with_options(options))
    with tempfile.TemporaryDirectory() as probe:
      try:
        self.save_position(os.path.join(probe, "iterator"))
      except tf.errors.OpError as e:
        raise ValueError(
          f"{name} cannot be checkpointed ({e.message.splitlines()[0]}); set "
          f"DataConfig.checkpoint_input=False (a resumed run then restarts its input stream)"
        ) from e

  def __iter__(self) -> "TFDataBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return tf.nest.map_structure(lambda t: t.numpy(), next(self._iterator))

  def save_position(self, prefix: str) -> None:
    tf.train.Checkpoint(iterator=self._iterator).write(prefix)

  def restore_position(self, prefix: str) -> None:
    tf.train.Checkpoint(iterator=self._iterator).read(prefix).assert_consumed()


def batches(
  config: DataConfig,
  split: str,
  batch_size: int,
  length: int,
  *,
  repeat: bool,
  shuffle: bool,
  checkpointable: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of global batches of `batch_size` rows of length `length` from `split`: a
  TFDataBatches (position saved with each checkpoint) if `checkpointable`, else a plain numpy iterator.

  The stream is a function of (config, split, length, process index and count): seqio seeds the shuffles, the
  Mixture sampling and the per-document corruption from `config.seed`, and tf.data keeps the order."""
  rows = _local_rows(batch_size)
  ds = _dataset(config, split, length, shuffle=shuffle, num_epochs=None if repeat else 1)
  ds = ds.batch(rows, drop_remainder=True).prefetch(2)
  if checkpointable:
    return TFDataBatches(ds, name=f"the {split} pipeline of {config.mixture_or_task_name!r}")
  return ds.as_numpy_iterator()


def eval_batches(config: DataConfig, split: str, batch_size: int, length: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches of `split` in source order, as `batches(..., repeat=True, shuffle=False)` but repeated after the
  rows are made: a split whose examples all give no row (e.g. the right answer unknown) ends at once instead of
  reading its source forever, and every epoch holds the same rows."""
  rows = _local_rows(batch_size)
  ds = _dataset(config, split, length, shuffle=False, num_epochs=1).repeat()
  return ds.batch(rows, drop_remainder=True).prefetch(2).as_numpy_iterator()


def _local_rows(batch_size: int) -> int:
  if batch_size % jax.process_count():
    raise ValueError(f"batch_size={batch_size} does not split over {jax.process_count()} processes")
  return batch_size // jax.process_count()


def _dataset(config: DataConfig, split: str, length: int, *, shuffle: bool, num_epochs: int | None) -> tf.data.Dataset:
  return seqio.get_dataset(
    config.mixture_or_task_name,
    task_feature_lengths=feature_converter.task_feature_lengths(length, cloze=config.candidates is not None),
    dataset_split=split,
    shuffle=shuffle,
    num_epochs=num_epochs,
    feature_converter=feature_converter.GLMFeatureConverter(pack=config.pack, candidates=config.candidates),
    shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()),
    seed=config.seed,
    trim_output_features=config.candidates is None,  # a cloze example holds C rows: longer than one row
  )

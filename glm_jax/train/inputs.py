"""seqio input pipelines for the loop: process-local numpy batches of model features [rows, L]."""
from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np
import seqio

from glm_jax.data import feature_converter


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """A registered seqio Task or Mixture (import its module first, e.g. `import tasks`) and its splits."""
  mixture_or_task_name: str = "glm_embedded"
  train_split: str = "train"
  eval_split: str | None = "validation"  # None: no evaluation
  pack: bool = True
  seed: int = 0


def batches(config: DataConfig, split: str, batch_size: int, length: int, *, repeat: bool,
            shuffle: bool) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of global batches of `batch_size` rows of length `length` from `split`."""
  if batch_size % jax.process_count():
    raise ValueError(f"batch_size={batch_size} does not split over {jax.process_count()} processes")
  ds = seqio.get_dataset(
      config.mixture_or_task_name,
      task_feature_lengths=feature_converter.task_feature_lengths(length),
      dataset_split=split,
      shuffle=shuffle,
      num_epochs=None if repeat else 1,
      feature_converter=feature_converter.GLMFeatureConverter(pack=config.pack),
      shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()),
      seed=config.seed,
  )
  ds = ds.batch(batch_size // jax.process_count(), drop_remainder=True).prefetch(2)
  return ds.as_numpy_iterator()

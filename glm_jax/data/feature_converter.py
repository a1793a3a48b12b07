"""seqio feature converter from corrupted GLM examples to fixed-length model features.

Task features (one example, rank 1, length T <= L): input_ids, target_ids, loss_mask, position_ids,
block_position_ids, sep, objective_ids (see glm_jax.data.example). Model features (docs/design.md), every one exactly
L long so the train step compiles once: the seven task features plus segment_ids.

Unpacked: one example per row, padded with zeros; segment_ids 1 on its tokens, 0 on padding.
Packed: each window of PACK_WINDOW consecutive examples is packed first-fit (`first_fit`: each example goes to the
first row of the window with room for it, so a row holds its examples in their order) into rows of L, segment_ids
1..n in a row; each token keeps its own example's `sep`, positions and objective; padding is all zeros. The packing
is one numpy call per window (a `tf.numpy_function` after `ragged_batch`): index arithmetic and one scatter per
feature, no per-token work in Python. seqio's own packer (`trim_and_pack_dataset`) fills rows next-fit, one open row
at a time, in a tf.while_loop per example, and was the pipeline's slowest part; first-fit also fills rows better.
The same input gives the same rows.
"""

from __future__ import annotations

import functools
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data.example import DTYPES, FEATURES, MODEL_FEATURES

_Spec = seqio.FeatureConverter.FeatureSpec
# Examples packed together: more fill rows better (a window's last rows are emitted part-filled), fewer keep memory
# and latency small; 256 examples fill rows of L = 512 to about 0.9.
PACK_WINDOW = 256


def task_feature_lengths(max_length: int, cloze: bool = False) -> dict[str, int]:
  """The `task_feature_lengths` mapping seqio expects for this converter: every task feature at max_length (with
  `cloze`, the cloze layout's features too: GLMFeatureConverter(candidates=C))."""
  return {name: max_length for name in (*FEATURES, *(CLOZE_FEATURES if cloze else ()))}


def _assert_fits(num_tokens: tf.Tensor, length: int) -> None:
  """Fails the pipeline on an example longer than the rows (padding and packing would cut it silently)."""
  tf.debugging.assert_less_equal(
    num_tokens,
    length,
    message=f"a GLM example is longer than the feature converter length {length}; corrupt with "
    f"max_length <= {length} or raise the task feature lengths",
  )


CLOZE_FEATURES = ("cloze_candidate", "cloze_label")


def candidate_rows(*flat: np.ndarray, length: int, candidates: int) -> list[np.ndarray]:
  """One cloze example's rows: its features (FEATURES then CLOZE_FEATURES, the candidates' rows concatenated) ->
  MODEL_FEATURES and cloze_label, each [candidates, length], zeros on padding and on missing candidates."""
  values = dict(zip((*FEATURES, *CLOZE_FEATURES), flat))
  candidate = values["cloze_candidate"]
  if candidate.size and (candidate.max() >= candidates or np.any(np.diff(candidate) < 0)):
    raise ValueError(
      f"a cloze example has candidates {sorted(set(candidate.tolist()))}; the converter takes 0..{candidates - 1} "
      "in order (raise DataConfig.candidates)"
    )
  sizes = np.bincount(candidate, minlength=candidates)
  if sizes.max(initial=0) > length:
    raise ValueError(
      f"a cloze candidate row of {int(sizes.max())} tokens is longer than the feature converter length {length}"
    )
  out = {name: np.zeros((candidates, length), DTYPES[name]) for name in MODEL_FEATURES}
  starts = np.cumsum(sizes) - sizes
  for c in np.flatnonzero(sizes):
    span = slice(starts[c], starts[c] + sizes[c])
    for name in FEATURES:
      out[name][c, : sizes[c]] = values[name][span]
    out["segment_ids"][c, : sizes[c]] = 1
  label = np.zeros((candidates, length), np.int32)
  label[:] = values["cloze_label"][0] if values["cloze_label"].size else 0
  return [*(out[name] for name in MODEL_FEATURES), label]


def first_fit(lengths: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
  """(row, offset) [K] of examples of `lengths` [K] (each <= length) packed first-fit into rows of `length`: each in
  the first row with room for it. Rows are numbered in the order they open."""
  free = np.full(lengths.size, length, np.int64)
  rows = np.empty(lengths.size, np.int64)
  offsets = np.empty(lengths.size, np.int64)
  for i, size in enumerate(lengths.tolist()):
    row = int(np.argmax(free >= size))  # a row is always found: there are as many as examples
    rows[i], offsets[i] = row, length - free[row]
    free[row] -= size
  return rows, offsets


def pack_window(lengths: np.ndarray, *flat: np.ndarray, length: int) -> list[np.ndarray]:
  """The packed rows of one window of examples: `lengths` [features, K] (each feature's length per example) and the
  features' concatenated values, in FEATURES order. Returns MODEL_FEATURES, each [rows, length], zeros on padding.
  Raises ValueError on an example whose features differ in length or that is longer than `length`."""
  sizes = lengths[0]
  if np.any(lengths != sizes):
    raise ValueError(f"the features {FEATURES} of a GLM example must have one length")
  if sizes.size and sizes.max() > length:
    raise ValueError(
      f"a GLM example of {int(sizes.max())} tokens is longer than the feature converter length {length}; corrupt "
      f"with max_length <= {length} or raise the task feature lengths"
    )
  rows, offsets = first_fit(sizes, length)
  num_rows = int(rows.max()) + 1 if rows.size else 0
  # Destination of every token in the [rows * length] output: its example's row start + offset + its index.
  starts = np.cumsum(sizes) - sizes
  destination = np.repeat(rows * length + offsets - starts, sizes) + np.arange(int(sizes.sum()))
  out = []
  for name, values in zip(FEATURES, flat):
    packed = np.zeros(num_rows * length, DTYPES[name])
    packed[destination] = values
    out.append(packed.reshape(num_rows, length))
  # Segment numbers: an example's rank among those of its row (rows keep their examples in order).
  order = np.lexsort((np.arange(rows.size), rows))
  first_of_row = np.searchsorted(rows[order], rows[order], side="left")
  rank = np.empty(rows.size, np.int64)
  rank[order] = np.arange(rows.size) - first_of_row + 1
  segment_ids = np.zeros(num_rows * length, np.int32)
  segment_ids[destination] = np.repeat(rank, sizes)
  out.append(segment_ids.reshape(num_rows, length))
  return out


class GLMFeatureConverter(seqio.FeatureConverter):
  """Pads or packs GLM blank-infilling examples to rows of exactly L tokens.

  Example, packed, L = 12 (two examples of 6 and 4 tokens):
    input_ids          [CLS  a  [MASK]  [sop]  b  c   CLS [gMASK] [sop]  d   0  0]
    segment_ids        [1    1  1       1      1  1   2   2       2      2   0  0]
    sep                [3    3  3       3      3  3   2   2       2      2   0  0]
  """

  TASK_FEATURES = {name: _Spec(dtype=tf.as_dtype(DTYPES[name])) for name in FEATURES}
  MODEL_FEATURES = {**TASK_FEATURES, "segment_ids": _Spec(dtype=tf.int32)}
  # segment_ids is a model feature in both modes, so packing adds no features of its own.
  PACKING_FEATURE_DTYPES = {}

  def __init__(
    self, pack: bool = True, apply_length_check: bool = False, candidates: int | None = None, **kwargs
  ) -> None:
    """`apply_length_check` turns on seqio's per-feature length assertions (off by default: they cost as much
    as the packing itself, and the converter always asserts the one length its features share).

    `candidates` (C): the cloze layout of the cross-entropy loss (glm_jax.train.step.LossConfig.cloze_candidates):
    each task example holds all its candidates' rows one after the other, told apart by `cloze_candidate`
    (0..C-1) and carrying the right one in `cloze_label`; it becomes C padded rows (an example with fewer
    candidates gets empty rows), with `cloze_label` on every token of them. Not packed. Such an example is longer
    than one row: get it with `seqio.get_dataset(..., trim_output_features=False)` (each row is checked here)."""
    if candidates is not None:
      if pack:
        raise ValueError("cloze candidate rows are padded, not packed: use pack=False (DataConfig.pack = False)")
      self.TASK_FEATURES = {**self.TASK_FEATURES, **{name: _Spec(dtype=tf.int32) for name in CLOZE_FEATURES}}
      self.MODEL_FEATURES = {**self.MODEL_FEATURES, "cloze_label": _Spec(dtype=tf.int32)}
    self.candidates = candidates
    super().__init__(pack=pack, apply_length_check=apply_length_check, **kwargs)

  def _length(self, task_feature_lengths: Mapping[str, int]) -> int:
    lengths = {task_feature_lengths[name] for name in FEATURES}
    if len(lengths) != 1:
      raise ValueError(
        f"GLM task features share one length; got {dict(task_feature_lengths)} "
        "(use glm_jax.data.feature_converter.task_feature_lengths(max_length))"
      )
    return lengths.pop()

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = self._length(task_feature_lengths)
    if self.candidates is not None:
      return self._candidate_rows(ds, length)
    if self.pack:
      return self._pack_rows(ds, length)
    return self._pad_rows(ds, length)

  def _candidate_rows(self, ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
    names = (*FEATURES, *CLOZE_FEATURES)
    out_names = (*MODEL_FEATURES, "cloze_label")
    out_types = [tf.as_dtype(DTYPES.get(name, np.int32)) for name in out_names]

    def rows(ex):
      out = tf.numpy_function(
        functools.partial(candidate_rows, length=length, candidates=self.candidates),
        [ex[name] for name in names],
        out_types,
        stateful=False,
      )
      for value in out:
        value.set_shape([self.candidates, length])
      return dict(zip(out_names, out))

    return ds.map(rows, num_parallel_calls=tf.data.AUTOTUNE).unbatch()

  def _pad_rows(self, ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
    def add_segment_ids(ex):
      sizes = tf.stack([tf.size(ex[name]) for name in FEATURES])
      tf.debugging.assert_equal(
        tf.reduce_min(sizes),
        tf.reduce_max(sizes),
        message=f"the features {FEATURES} of a GLM example must have one length",
      )
      _assert_fits(sizes[0], length)
      ex = {name: ex[name] for name in FEATURES}
      ex["segment_ids"] = tf.ones_like(ex["input_ids"])
      return ex

    ds = ds.map(add_segment_ids, num_parallel_calls=tf.data.AUTOTUNE)
    return seqio.utils.trim_and_pad_dataset(ds, {name: length for name in self.MODEL_FEATURES})

  def _pack_rows(self, ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
    out_types = [tf.as_dtype(DTYPES[name]) for name in MODEL_FEATURES]

    def pack(batch):
      lengths = tf.stack([batch[name].row_lengths() for name in FEATURES])  # [features, K]
      flat = [batch[name].flat_values for name in FEATURES]
      rows = tf.numpy_function(
        functools.partial(pack_window, length=length), [lengths, *flat], out_types, stateful=False
      )
      out = {}
      for name, value in zip(MODEL_FEATURES, rows):
        value.set_shape([None, length])
        out[name] = value
      return out

    ds = ds.ragged_batch(PACK_WINDOW).map(pack, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.unbatch()

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    length = self._length(task_feature_lengths)
    return {name: length for name in self.MODEL_FEATURES}

"""seqio feature converter from corrupted GLM examples to fixed-length model features.

Task features (one example, rank 1, length T <= L): input_ids, target_ids, loss_mask, position_ids,
block_position_ids, sep, objective_ids (see glm_jax.data.example). Model features (docs/design.md), every one exactly
L long so the train step compiles once: the seven task features plus segment_ids.

Unpacked: one example per row, padded with zeros; segment_ids 1 on its tokens, 0 on padding.
Packed: seqio's own packer (`seqio.utils.trim_and_pack_dataset`) fills each row with several examples,
segment_ids 1..n; each token keeps its own example's `sep` and positions; padding is all zeros.

seqio's tf-op packer treats the value 0 as padding when it measures an example, and its loop costs more per
feature and per value than anything else in the pipeline. So the converter packs one int32 feature: per token
the four lanes (input_ids, target_ids, position_ids * (L + 1) + block_position_ids,
(sep * len(OBJECTIVES) + objective_ids) * 2 + loss_mask) interleaved into a vector of length 4T, every value
shifted by +1 (all task values are non-negative and loss_mask is 0 or 1), packed to length 4L and split back. This
needs L <= 46340 (L * (L + 1) < 2**31).
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from glm_jax.data.example import DTYPES, FEATURES, OBJECTIVES

_Spec = seqio.FeatureConverter.FeatureSpec
_PACKED = "glm_features"
_LANES = 4
_NUM_OBJECTIVES = len(OBJECTIVES)
MAX_PACKED_LENGTH = 46340  # position_ids * (L + 1) + block_position_ids + 1 must fit in an int32


def task_feature_lengths(max_length: int) -> dict[str, int]:
  """The `task_feature_lengths` mapping seqio expects for this converter: every task feature at max_length."""
  return {name: max_length for name in FEATURES}


def _assert_fits(num_tokens: tf.Tensor, length: int) -> None:
  """Fails the pipeline on an example longer than the rows (padding and packing would cut it silently)."""
  tf.debugging.assert_less_equal(
    num_tokens,
    length,
    message=f"a GLM example is longer than the feature converter length {length}; corrupt with "
    f"max_length <= {length} or raise the task feature lengths",
  )


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

  def __init__(self, pack: bool = True, apply_length_check: bool = False, **kwargs) -> None:
    """`apply_length_check` turns on seqio's per-feature length assertions (off by default: they cost as much
    as the packing itself, and the converter always asserts the one length its features share)."""
    super().__init__(pack=pack, apply_length_check=apply_length_check, **kwargs)

  def _length(self, task_feature_lengths: Mapping[str, int]) -> int:
    lengths = {task_feature_lengths[name] for name in FEATURES}
    if len(lengths) != 1:
      raise ValueError(
        f"GLM task features share one length; got {dict(task_feature_lengths)} "
        "(use glm_jax.data.feature_converter.task_feature_lengths(max_length))"
      )
    length = lengths.pop()
    if self.pack and length > MAX_PACKED_LENGTH:
      raise ValueError(
        f"packed length {length} exceeds {MAX_PACKED_LENGTH}, the most the packed int32 lanes "
        "hold; use GLMFeatureConverter(pack=False) or a shorter length"
      )
    return length

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = self._length(task_feature_lengths)
    if self.pack:
      return self._pack_rows(ds, length)
    return self._pad_rows(ds, length)

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
    scale = length + 1  # block_position_ids <= L < scale

    def interleave(ex):
      loss = tf.cast(ex["loss_mask"], tf.int32)
      tf.debugging.assert_equal(
        tf.cast(loss, tf.float32), ex["loss_mask"], message="packing needs loss_mask values of 0.0 or 1.0"
      )
      lanes = tf.stack(
        [
          ex["input_ids"],
          ex["target_ids"],
          ex["position_ids"] * scale + ex["block_position_ids"],
          (ex["sep"] * _NUM_OBJECTIVES + ex["objective_ids"]) * 2 + loss,
        ],
        axis=1,
      )  # [T, 4]; fails on features of different lengths
      _assert_fits(tf.shape(lanes)[0], length)
      return {_PACKED: tf.reshape(lanes + 1, [-1])}

    def split(ex):
      # Padding is 0 and every real value v was stored as v + 1, so this restores both.
      lanes = tf.maximum(tf.reshape(ex[_PACKED], [length, _LANES]) - 1, 0)
      input_ids, target_ids, positions, sep_loss = tf.unstack(lanes, axis=1)
      sep_objective = sep_loss // 2
      return {
        "input_ids": input_ids,
        "target_ids": target_ids,
        "loss_mask": tf.cast(sep_loss % 2, tf.float32),
        "position_ids": positions // scale,
        "block_position_ids": positions % scale,
        "sep": sep_objective // _NUM_OBJECTIVES,
        "objective_ids": sep_objective % _NUM_OBJECTIVES,
        "segment_ids": ex[_PACKED + "_segment_ids"][::_LANES],
      }

    ds = ds.map(interleave, num_parallel_calls=tf.data.AUTOTUNE)
    ds = seqio.utils.trim_and_pack_dataset(ds, {_PACKED: length * _LANES})
    return ds.map(split, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    length = self._length(task_feature_lengths)
    return {name: length for name in self.MODEL_FEATURES}

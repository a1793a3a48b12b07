"""Tests for GLMFeatureConverter: fixed-length rows, padding, seqio packing that keeps segments apart."""

from __future__ import annotations

import numpy as np
import pytest
import seqio
import tensorflow as tf

from glm_jax.data import blank_infilling as bi, example, feature_converter as fc
from glm_jax.ops import mask as mask_lib

SPECIAL = example.SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7)
MODEL_FEATURES = set(example.FEATURES) | {"segment_ids"}


def corpus(objective: str, max_length: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Examples from documents of 0..4L tokens (many short tails, so rows hold several segments)."""
  rng = np.random.default_rng(seed)
  examples = []
  for _ in range(40):
    doc = rng.integers(8, 3000, rng.integers(0, 4 * max_length)).astype(np.int32)
    if objective == "tokens":
      examples += bi.corrupt_tokens(doc, rng, max_length=max_length, special=SPECIAL)
    elif objective == "sentences":
      cuts = np.sort(rng.integers(0, doc.size + 1, doc.size // 12))
      lengths = np.diff(np.concatenate([[0], cuts, [doc.size]]))
      examples += bi.corrupt_sentences(doc, lengths, rng, max_length=max_length, special=SPECIAL)
    else:
      examples += bi.corrupt_document(doc, rng, max_length=max_length, special=SPECIAL, suffix_prob=0.5)
  return examples


def dataset(examples: list[dict[str, np.ndarray]]) -> tf.data.Dataset:
  return tf.data.Dataset.from_tensor_slices(
    {
      name: tf.RaggedTensor.from_row_lengths(
        np.concatenate([ex[name] for ex in examples]), [ex[name].size for ex in examples]
      )
      for name in example.FEATURES
    }
  )


def convert(examples, max_length, pack, **kwargs) -> list[dict[str, np.ndarray]]:
  converter = fc.GLMFeatureConverter(pack=pack, **kwargs)
  return list(converter(dataset(examples), fc.task_feature_lengths(max_length)).as_numpy_iterator())


def check_row_format(row, max_length):
  assert set(row) == MODEL_FEATURES
  for name, value in row.items():
    assert value.shape == (max_length,), name
    assert value.dtype == (np.float32 if name == "loss_mask" else np.int32), name
  padding = row["segment_ids"] == 0
  for name in example.FEATURES:
    assert not row[name][padding].any(), f"{name} must be 0 on padding"
  assert not padding[: np.argmax(padding)].any() if padding.any() else True  # padding only at the end


def segments(row) -> list[dict[str, np.ndarray]]:
  """Splits a row into its examples, checking segments are contiguous and numbered 1..n."""
  ids = row["segment_ids"]
  n = ids.max()
  out = []
  for segment in range(1, n + 1):
    where = np.flatnonzero(ids == segment)
    assert where.size and np.array_equal(where, np.arange(where[0], where[-1] + 1)), "contiguous segment"
    out.append({name: row[name][where] for name in example.FEATURES})
  return out


def _key(ex) -> bytes:
  return b"".join(np.asarray(ex[name]).tobytes() for name in example.FEATURES)


@pytest.mark.parametrize("objective", ["tokens", "sentences", "document"])
@pytest.mark.parametrize("pack", [False, True])
def test_rows_hold_exactly_the_examples(objective, pack):
  """Unpacked: one example per row, in order. Packed: every example exactly once; a row holds examples of one window
  (fc.PACK_WINDOW consecutive examples) in their order."""
  max_length = 48
  examples = corpus(objective, max_length)
  for i, ex in enumerate(examples):
    ex["objective_ids"] = np.full_like(ex["objective_ids"], i % len(example.OBJECTIVES))
  rows = convert(examples, max_length, pack)
  index = {}
  for i, ex in enumerate(examples):
    index.setdefault(_key(ex), []).append(i)
  recovered, origin = [], []
  for row in rows:
    check_row_format(row, max_length)
    row_origin = []
    for ex in segments(row):
      np.testing.assert_array_equal(ex["sep"], ex["sep"][0])  # each token carries its own example's sep
      recovered.append(ex)
      row_origin.append(index[_key(ex)].pop(0))
    assert row_origin == sorted(row_origin) and len({i // fc.PACK_WINDOW for i in row_origin}) == 1
    origin += row_origin
  assert sorted(origin) == list(range(len(examples)))
  for got, i in zip(recovered, origin):
    want = examples[i]
    for name in example.FEATURES:
      np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # Each segment reconstructs on its own.
    np.testing.assert_array_equal(example.reconstruct(got, SPECIAL), example.reconstruct(want, SPECIAL))
  if pack:
    assert len(rows) < len(examples)
    assert max(row["segment_ids"].max() for row in rows) > 1
  else:
    assert origin == list(range(len(examples)))
    assert len(rows) == len(examples)
    assert all(row["segment_ids"].max() == 1 for row in rows)


def test_first_fit_fills_rows_and_keeps_each_rows_order():
  lengths = np.array([5, 4, 3, 6, 2, 1, 7])
  rows, offsets = fc.first_fit(lengths, 8)
  # [5 . 3] [4 . 2 1 .] [6] [7]: each example in the first row with room.
  assert rows.tolist() == [0, 1, 0, 2, 1, 1, 3] and offsets.tolist() == [0, 0, 5, 0, 4, 6, 0]
  rng = np.random.default_rng(0)
  for _ in range(20):
    lengths = rng.integers(1, 65, rng.integers(1, 300))
    rows, offsets = fc.first_fit(lengths, 64)
    for r in range(rows.max() + 1):
      mine = np.flatnonzero(rows == r)
      ends = offsets[mine] + lengths[mine]
      assert np.all(offsets[mine][1:] == ends[:-1]) and offsets[mine][0] == 0 and ends[-1] <= 64


def test_packed_rows_are_well_filled():
  """At L = 512, the corruption's pieces pack to rows at least 85% full (seqio's next-fit packer gave 0.85)."""
  rng = np.random.default_rng(1)
  examples = []
  for _ in range(300):
    doc = rng.integers(8, 3000, int(rng.lognormal(6.0, 1.2))).astype(np.int32)
    examples += bi.corrupt_tokens(doc, rng, max_length=512, special=SPECIAL)
  rows = convert(examples, 512, pack=True)
  fill = sum(int(np.count_nonzero(row["segment_ids"])) for row in rows) / (len(rows) * 512)
  assert fill >= 0.85, fill


def test_packed_attention_is_the_block_diagonal_of_the_examples():
  # The attention rule over a packed row equals each example's own rule on its diagonal block: packed
  # segments share nothing.
  max_length = 40
  rng = np.random.default_rng(1)
  examples = [
    ex
    for n in (4, 6, 3, 5)
    for ex in bi.corrupt_tokens(np.arange(8, 8 + n, dtype=np.int32), rng, max_length=max_length, special=SPECIAL)
  ]
  (row,) = convert(examples, max_length, pack=True)
  assert row["segment_ids"].max() == 4
  packed = np.asarray(mask_lib.dense_mask(row["sep"][None], row["segment_ids"][None]))[0]
  expected = np.zeros_like(packed)
  start = 0
  for ex in segments(row):
    n = ex["input_ids"].size
    alone = mask_lib.dense_mask(ex["sep"][None, :1], np.ones((1, n), np.int32))
    expected[start : start + n, start : start + n] = np.asarray(alone)[0]
    start += n
  np.testing.assert_array_equal(packed, expected)


def test_unpacked_row_is_the_example_padded_with_zeros():
  ex = bi.corrupt_tokens(np.arange(8, 28, dtype=np.int32), np.random.default_rng(0), max_length=32, special=SPECIAL)[0]
  (row,) = convert([ex], 32, pack=False)
  n = ex["input_ids"].size
  for name in example.FEATURES:
    np.testing.assert_array_equal(row[name][:n], ex[name])
    np.testing.assert_array_equal(row[name][n:], 0)
  np.testing.assert_array_equal(row["segment_ids"], (np.arange(32) < n).astype(np.int32))


@pytest.mark.parametrize("pack", [False, True])
def test_example_longer_than_the_rows_fails_loudly(pack):
  examples = bi.corrupt_document(
    np.arange(8, 108, dtype=np.int32), np.random.default_rng(0), max_length=64, special=SPECIAL
  )
  with pytest.raises(tf.errors.InvalidArgumentError, match="longer than the feature converter length 32"):
    convert(examples, 32, pack)


def test_features_of_different_lengths_fail_loudly():
  ex = bi.corrupt_document(np.arange(8, 20, dtype=np.int32), np.random.default_rng(0), max_length=64, special=SPECIAL)[
    0
  ]
  ex["sep"] = ex["sep"][:-1]
  with pytest.raises(tf.errors.InvalidArgumentError, match="must have one length"):
    convert([ex], 32, pack=False)


def test_task_feature_lengths_must_agree():
  lengths = fc.task_feature_lengths(64) | {"sep": 32}
  with pytest.raises(ValueError, match="share one length"):
    fc.GLMFeatureConverter(pack=False)(dataset(corpus("document", 32)), lengths)


def test_model_feature_lengths_and_seqio_validation():
  converter = fc.GLMFeatureConverter(pack=True, apply_length_check=True)
  assert converter.get_model_feature_lengths(fc.task_feature_lengths(16)) == {n: 16 for n in MODEL_FEATURES}
  assert isinstance(converter, seqio.FeatureConverter)
  # seqio's own checks still pass on our output when turned on.
  rows = list(converter(dataset(corpus("sentences", 16)), fc.task_feature_lengths(16)).as_numpy_iterator())
  assert rows and all(row["input_ids"].shape == (16,) for row in rows)


def test_packing_keeps_every_value_as_it_is():
  """Packing moves values, never encodes them: a fractional loss mask and long rows survive."""
  ex = bi.corrupt_document(np.arange(8, 20, dtype=np.int32), np.random.default_rng(0), max_length=64, special=SPECIAL)[
    0
  ]
  ex["loss_mask"] = ex["loss_mask"] * 0.5
  (row,) = convert([ex], 32, pack=True)
  np.testing.assert_array_equal(row["loss_mask"][: ex["loss_mask"].size], ex["loss_mask"])
  lengths = fc.GLMFeatureConverter(pack=True).get_model_feature_lengths(fc.task_feature_lengths(50_000))
  assert lengths["input_ids"] == 50_000

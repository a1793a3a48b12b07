"""The GLM example layout: both builders against a per-token oracle, reading rows back, padding as the converter
pads, and the one record of special ids."""

from __future__ import annotations

import collections

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import seqio
import tensorflow as tf

from glm_jax.data import example, feature_converter

IDS = example.SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7)
FIRST_TEXT_ID = 8  # text ids never collide with special ids


def oracle(piece, starts, lengths, mask_id, order):
  """The layout's definition, one token at a time: Part A = [CLS] + the piece with each span as one mask token,
  then Part B = [sop] + span for each span in `order`."""
  part_a, mask_index, i = [IDS.cls], {}, 0
  span_at = dict(zip(starts.tolist(), lengths.tolist()))
  while i < piece.size:
    if i in span_at:
      mask_index[i] = len(part_a)
      part_a.append(mask_id)
      i += span_at[i]
    else:
      part_a.append(int(piece[i]))
      i += 1
  ex = collections.defaultdict(list)
  for j, token in enumerate(part_a):
    for name, value in zip(example.FEATURES, (token, token, 0.0, j, 0, len(part_a), 0)):
      ex[name].append(value)
  for s in order:
    start, length = int(starts[s]), int(lengths[s])
    span = piece[start : start + length].tolist()
    for j, (token, target) in enumerate(zip([IDS.sop] + span, span + [IDS.eop])):
      for name, value in zip(example.FEATURES, (token, target, 1.0, mask_index[start], j + 1, len(part_a), 0)):
        ex[name].append(value)
  return ex, part_a, [(mask_index[int(starts[s])], piece[starts[s] : starts[s] + lengths[s]].tolist()) for s in order]


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.data(), st.integers(0, 2**32 - 1))
def test_both_builders_match_the_per_token_oracle(data, seed):
  n = data.draw(st.integers(1, 80))
  # Spans: a random set of disjoint [start, end) intervals, possibly adjacent.
  cuts = sorted(set(data.draw(st.lists(st.integers(0, n), min_size=2, max_size=20))))
  intervals = [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if data.draw(st.booleans())]
  hypothesis.assume(intervals)
  starts = np.array([a for a, _ in intervals])
  lengths = np.array([b - a for a, b in intervals])
  piece = np.arange(FIRST_TEXT_ID, FIRST_TEXT_ID + n, dtype=np.int32)
  order = np.random.default_rng(seed).permutation(len(intervals))
  expected, part_a, spans = oracle(piece, starts, lengths, IDS.smask, order)
  fast = example.from_piece(piece, starts, lengths, IDS.smask, IDS, order)
  general = example.from_spans(part_a, spans, IDS)
  for name in example.FEATURES:
    want = np.array(expected[name], example.DTYPES[name])
    np.testing.assert_array_equal(fast[name], want, err_msg=name)
    np.testing.assert_array_equal(general[name], want, err_msg=name)
    assert fast[name].dtype == general[name].dtype == want.dtype
  np.testing.assert_array_equal(example.reconstruct(fast, IDS), piece)
  assert [(p, s.tolist()) for p, s in example.split(general)[1]] == spans


def test_reconstruct_is_exact_on_a_hand_written_example():
  # Piece [10 11 12 13 14], spans (1, len 2) and (4, len 1); B order: second span first.
  ex = {
    "input_ids": np.array([2, 10, 3, 13, 3, 6, 14, 6, 11, 12], np.int32),
    "target_ids": np.array([2, 10, 3, 13, 3, 14, 7, 11, 12, 7], np.int32),
    "block_position_ids": np.array([0, 0, 0, 0, 0, 1, 2, 1, 2, 3], np.int32),
    "position_ids": np.array([0, 1, 2, 3, 4, 4, 4, 2, 2, 2], np.int32),
    "sep": np.full(10, 5, np.int32),
  }
  np.testing.assert_array_equal(example.reconstruct(ex, IDS), [10, 11, 12, 13, 14])
  part_a, spans = example.split(ex)
  np.testing.assert_array_equal(part_a, [2, 10, 3, 13, 3])
  assert [(p, s.tolist()) for p, s in spans] == [(4, [14]), (2, [11, 12])]
  ex["input_ids"][9] = 99  # a Part B input replaced ([dBLOCK]): the spans are read from the targets
  assert [(p, s.tolist()) for p, s in example.split(ex)[1]] == [(4, [14]), (2, [11, 12])]


def test_a_span_being_decoded_and_an_empty_one():
  ex = example.from_spans([2, 10, 3, 11, 5], [(2, [20, 21]), (4, [])], IDS)
  np.testing.assert_array_equal(ex["input_ids"], [2, 10, 3, 11, 5, 6, 20, 21, 6])
  np.testing.assert_array_equal(ex["target_ids"], [2, 10, 3, 11, 5, 20, 21, 7, 7])
  np.testing.assert_array_equal(ex["position_ids"], [0, 1, 2, 3, 4, 2, 2, 2, 4])
  np.testing.assert_array_equal(ex["block_position_ids"], [0, 0, 0, 0, 0, 1, 2, 3, 1])
  assert ex["sep"].tolist() == [5] * 9 and ex["loss_mask"].tolist() == [0] * 5 + [1] * 4
  with pytest.raises(ValueError, match="span position 5 is outside Part A of 5 tokens"):
    example.from_spans([2, 10, 3, 11, 5], [(5, [1])], IDS)


def test_pad_writes_the_rows_the_feature_converter_writes_unpacked():
  examples = [
    example.from_spans([2, 10, 3, 11], [(2, [20, 21])], IDS),
    example.from_spans([2, 3, 12, 13, 5], [(1, [30]), (4, [31, 32])], IDS),
  ]
  length = 16
  ds = tf.data.Dataset.from_generator(
    lambda: iter(examples),
    output_signature={n: tf.TensorSpec([None], tf.as_dtype(example.DTYPES[n])) for n in example.FEATURES},
  )
  converted = feature_converter.GLMFeatureConverter(pack=False)(ds, feature_converter.task_feature_lengths(length))
  for row, ex in zip(converted.as_numpy_iterator(), examples):
    padded = example.pad(ex, length)
    assert set(row) == set(padded) == set(example.MODEL_FEATURES)
    for name in example.MODEL_FEATURES:
      np.testing.assert_array_equal(padded[name], row[name], err_msg=name)
      assert padded[name].dtype == row[name].dtype
  with pytest.raises(ValueError, match="of 7 tokens does not fit a row of 6"):
    example.pad(examples[0], 6)
  batch = example.batch([example.pad(ex, length) for ex in examples])
  assert batch["input_ids"].shape == (2, length) and batch["loss_mask"].dtype == np.float32


class _Named:
  """A vocabulary stand-in that names its special tokens."""

  def __init__(self, **ids):
    self.special_ids = ids


def test_special_ids_are_looked_up_by_name_with_the_optional_extras():
  names = {"[pad]": 0, "[eos]": 0, "[CLS]": 101, "[MASK]": 103, "[sMASK]": 30525, "[gMASK]": 30524}
  names.update({"[sop]": 30522, "[eop]": 30523, "[UNK]": 100})
  ids = example.SpecialIds.from_vocabulary(_Named(**names))
  assert (ids.cls, ids.mask, ids.sop, ids.eop, ids.dblock) == (101, 103, 30522, 30523, None)
  assert ids.masks == (103, 30525, 30524)
  assert example.SpecialIds.from_vocabulary(_Named(**names, **{"[dBLOCK]": 30526})).dblock == 30526
  assert example.blank_positions([101, 5, 103, 6, 30524], ids) == [2, 4]
  with pytest.raises(KeyError, match="'\\[sop\\]' is not in _Named"):
    example.SpecialIds.from_vocabulary(_Named(**{k: v for k, v in names.items() if k != "[sop]"}))
  with pytest.raises(TypeError, match="has no `special_ids`"):
    example.special_id(seqio.PassThroughVocabulary(10), "[MASK]")


def test_the_record_is_importable_from_the_data_package():
  from glm_jax.data import SpecialIds

  assert SpecialIds is example.SpecialIds


def test_encode_drops_the_lone_space_piece_before_a_blank(default_vocabulary_glm):
  vocabulary = default_vocabulary_glm(0, 16)[0]
  ids = example.SpecialIds.from_vocabulary(vocabulary)
  space = vocabulary.tokenizer.piece_to_id("\u2581")
  for text in ("The value is [MASK].", "[MASK] is the value.", "A [MASK] [sMASK] b"):
    raw = list(vocabulary.encode(text))
    assert space in raw  # what SentencePiece makes of the space before a blank (or of the text's start)
    tokens = example.encode_text(vocabulary, text, ids)
    assert space not in tokens and [t for t in raw if t != space] == tokens
  # A space piece not followed by a blank stays (this vocabulary spells "capital" as "\u2581", "cap", "it", "al").
  raw = list(vocabulary.encode("The capital is [MASK]."))
  tokens = example.encode_text(vocabulary, "The capital is [MASK].", ids)
  assert raw.count(space) == 2 and tokens.count(space) == 1 and len(tokens) == len(raw) - 1

"""Tests for GLM blank-infilling corruption: format invariants for any document, statistics, edge cases."""

from __future__ import annotations

import collections
import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest

from glm_jax.data import blank_infilling as bi, example

SPECIAL = example.SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7)
FIRST_TEXT_ID = 8  # text ids never collide with special ids, so mask tokens in A are recognizable


def check_example(ex: dict[str, np.ndarray], max_length: int, mask_id: int) -> tuple[np.ndarray, list]:
  """Asserts every format invariant of one example; returns (the piece it encodes, its B spans)."""
  assert set(ex) == set(example.FEATURES)
  for name, value in ex.items():
    assert value.ndim == 1, name
    assert value.dtype == (np.float32 if name == "loss_mask" else np.int32), name
  total = ex["input_ids"].size
  assert all(v.size == total for v in ex.values())
  assert total <= max_length
  sep = int(ex["sep"][0])
  np.testing.assert_array_equal(ex["sep"], sep)
  ids, targets, pos, block = ex["input_ids"], ex["target_ids"], ex["position_ids"], ex["block_position_ids"]
  assert ids[0] == SPECIAL.cls
  np.testing.assert_array_equal(targets[:sep], ids[:sep])
  np.testing.assert_array_equal(ex["loss_mask"], (np.arange(total) >= sep).astype(np.float32))
  np.testing.assert_array_equal(pos[:sep], np.arange(sep))
  np.testing.assert_array_equal(block[:sep], 0)
  part_a = ids[:sep]
  mask_positions = np.flatnonzero(part_a == mask_id)
  assert not np.isin(part_a, [SPECIAL.sop, SPECIAL.eop, SPECIAL.cls])[1:].any()

  part_a_again, spans = example.split(ex)
  np.testing.assert_array_equal(part_a_again, part_a)
  assert total > sep and block[sep] == 1  # Part B is not empty and starts with a span
  starts = sep + np.flatnonzero(block[sep:] == 1)
  ends = np.append(starts[1:], total)
  for start, end in zip(starts, ends):
    assert ids[start] == SPECIAL.sop
    np.testing.assert_array_equal(block[start:end], np.arange(1, end - start + 1))
    np.testing.assert_array_equal(pos[start:end], pos[start])
    assert part_a[pos[start]] == mask_id
    np.testing.assert_array_equal(targets[start : end - 1], ids[start + 1 : end])
    assert targets[end - 1] == SPECIAL.eop
    assert end - start >= 2  # every span holds at least one token
  # One B span per mask token of A, and no other mask kinds.
  assert sorted(p for p, _ in spans) == mask_positions.tolist()
  other_masks = {SPECIAL.mask, SPECIAL.smask, SPECIAL.gmask} - {mask_id}
  assert not np.isin(part_a, list(other_masks)).any()
  piece = example.reconstruct(ex, SPECIAL)
  assert piece.size == total - 1 - 2 * len(spans)  # the budget: [CLS] + 2 per span
  return piece, spans


def check_document(doc: np.ndarray, examples: list, max_length: int, mask_id: int) -> list[np.ndarray]:
  """Invariants of all examples of one document; every token ends up in exactly one piece, in order."""
  pieces = [check_example(ex, max_length, mask_id)[0] for ex in examples]
  rebuilt = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
  np.testing.assert_array_equal(rebuilt, doc)
  return pieces


def span_lengths_of(ex):
  return [span.size for _, span in example.split(ex)[1]]


docs = hnp.arrays(np.int32, st.integers(0, 300), elements=st.integers(FIRST_TEXT_ID, 5000))
max_lengths = st.integers(4, 160)
seeds = st.integers(0, 2**32 - 1)


@hypothesis.settings(max_examples=80, deadline=None)
@hypothesis.given(docs, max_lengths, seeds)
def test_token_level_invariants(doc, max_length, seed):
  examples = bi.corrupt_tokens(doc, np.random.default_rng(seed), max_length=max_length, special=SPECIAL)
  pieces = check_document(doc, examples, max_length, SPECIAL.mask)
  for i, (ex, piece) in enumerate(zip(examples, pieces)):
    lengths = span_lengths_of(ex)
    assert max(lengths) <= 39
    assert sum(lengths) >= math.ceil(0.15 * piece.size - 1e-9)
    part_a = ex["input_ids"][: ex["sep"][0]]
    is_mask = part_a == SPECIAL.mask
    assert not np.any(is_mask[1:] & is_mask[:-1]), "spans must be >= 1 unmasked token apart"
    if i < len(examples) - 1:
      # Pieces are sized from their drawn spans: one more token would cost at most 3 more.
      assert ex["input_ids"].size >= max_length - 2


@hypothesis.settings(max_examples=80, deadline=None)
@hypothesis.given(st.data(), docs, max_lengths, seeds)
def test_sentence_level_invariants(data, doc, max_length, seed):
  cuts = np.sort(data.draw(hnp.arrays(np.int64, st.integers(0, 40), elements=st.integers(0, doc.size))))
  sentence_lengths = np.diff(np.concatenate([[0], cuts, [doc.size]]))
  examples = bi.corrupt_sentences(
    doc, sentence_lengths, np.random.default_rng(seed), max_length=max_length, special=SPECIAL
  )
  pieces = check_document(doc, examples, max_length, SPECIAL.smask)
  # Sentence boundaries (long sentences cut into max_length - 3 chunks) are the only places a piece or a
  # masked span may begin or end.
  cap = max_length - 3
  boundaries = {0}
  for length in sentence_lengths[sentence_lengths > 0]:
    start = max(boundaries)
    boundaries.update(range(start + cap, start + length, cap))
    boundaries.add(start + length)
  offset = 0
  for ex, piece in zip(examples, pieces):
    assert offset in boundaries and offset + piece.size in boundaries
    part_a, spans = example.split(ex)
    masked = 0
    for position, span in sorted(spans, key=lambda s: s[0]):
      # Index in the piece of the span's first token: A tokens before the mask, plus earlier spans.
      start = offset + position - 1 + masked - sum(1 for p, _ in spans if p < position)
      assert start in boundaries and start + span.size in boundaries
      assert not any(start < b < start + span.size for b in boundaries), "a span is one whole sentence"
      masked += span.size
    assert masked >= math.ceil(0.15 * piece.size - 1e-9)
    offset += piece.size


@hypothesis.settings(max_examples=80, deadline=None)
@hypothesis.given(docs, max_lengths, seeds, st.sampled_from([0.0, 0.5, 1.0]))
def test_document_level_invariants(doc, max_length, seed, suffix_prob):
  examples = bi.corrupt_document(
    doc, np.random.default_rng(seed), max_length=max_length, special=SPECIAL, suffix_prob=suffix_prob
  )
  pieces = check_document(doc, examples, max_length, SPECIAL.gmask)
  for i, (ex, piece) in enumerate(zip(examples, pieces)):
    (length,) = span_lengths_of(ex)
    assert math.ceil(0.5 * piece.size) <= length <= piece.size
    if suffix_prob == 1.0:
      assert ex["input_ids"][ex["sep"][0] - 1] == SPECIAL.gmask  # [CLS] prefix [gMASK]
    if i < len(examples) - 1:
      assert ex["input_ids"].size == max_length


def test_place_spans_is_uniform_over_arrangements():
  # Two 1-token spans in 5 tokens with a gap between: C(4, 2) = 6 equally likely arrangements.
  rng = np.random.default_rng(0)
  counts = collections.Counter(tuple(bi.place_spans(rng, np.array([1, 1]), 5).tolist()) for _ in range(12000))
  assert set(counts) == {(0, 2), (0, 3), (0, 4), (1, 3), (1, 4), (2, 4)}
  for count in counts.values():
    assert abs(count - 2000) < 200  # > 4 standard deviations


def test_span_lengths_follow_truncated_poisson():
  rng = np.random.default_rng(1)
  doc = np.arange(FIRST_TEXT_ID, FIRST_TEXT_ID + 200_000, dtype=np.int32)
  examples = bi.corrupt_tokens(doc, rng, max_length=512, special=SPECIAL)
  lengths = np.array([length for ex in examples for length in span_lengths_of(ex)])
  k = np.arange(1, 40)
  pmf = np.exp(k * np.log(3.0) - 3.0 - np.array([math.lgamma(x + 1) for x in k]))
  pmf /= pmf.sum()
  mean, std = (k * pmf).sum(), math.sqrt((k**2 * pmf).sum() - (k * pmf).sum() ** 2)
  assert lengths.min() >= 1 and lengths.max() <= 39
  assert abs(lengths.mean() - mean) < 5 * std / math.sqrt(lengths.size), (lengths.mean(), mean)
  frequencies = np.bincount(lengths, minlength=40)[1:] / lengths.size
  np.testing.assert_allclose(frequencies[:6], pmf[:6], atol=0.015)
  # Coverage: at least 15% of every piece, and not much more on average (spans stop once it is reached).
  coverage = np.array([sum(span_lengths_of(ex)) / example.reconstruct(ex, SPECIAL).size for ex in examples])
  assert coverage.min() >= 0.15 and coverage.mean() < 0.17


def test_single_span_pieces_come_at_their_rate_with_one_poisson_span():
  """--single-span-prob: a piece with exactly one span of Poisson(3) length (at L=128 a covering piece needs 19
  tokens, so one span alone practically never covers it: single-span pieces are the option's)."""
  rng = np.random.default_rng(5)
  doc = np.arange(FIRST_TEXT_ID, FIRST_TEXT_ID + 125 * 2000, dtype=np.int32)
  examples = bi.corrupt_tokens(doc, rng, max_length=128, special=SPECIAL, single_span_prob=0.3)
  single = [span_lengths_of(ex) for ex in examples if len(span_lengths_of(ex)) == 1]
  assert abs(len(single) / len(examples) - 0.3) < 0.05, len(single) / len(examples)
  lengths = np.array([s[0] for s in single])
  assert lengths.min() >= 1 and lengths.max() <= 39 and abs(lengths.mean() - 3.16) < 0.35  # truncated Poisson(3)
  sizes = [example.reconstruct(ex, SPECIAL).size for ex in examples[:-1] if len(span_lengths_of(ex)) == 1]
  assert set(sizes) == {125}  # a single-span piece fills the budget: 128 - [CLS] - one mask - one [sop]
  np.testing.assert_array_equal(np.concatenate([example.reconstruct(ex, SPECIAL) for ex in examples]), doc)
  with pytest.raises(ValueError, match="single_span_prob"):
    bi.corrupt_tokens(doc[:10], rng, max_length=128, special=SPECIAL, single_span_prob=1.5)


def test_document_span_ratio_is_uniform_and_suffix_prob_is_honoured():
  rng = np.random.default_rng(2)
  doc = np.arange(FIRST_TEXT_ID, FIRST_TEXT_ID + 1001 * 3000, dtype=np.int32)
  examples = bi.corrupt_document(doc, rng, max_length=1004, special=SPECIAL, suffix_prob=0.3)
  ratios = np.array([span_lengths_of(ex)[0] / 1001 for ex in examples])
  assert ratios.min() >= 0.5 and ratios.max() <= 1.0
  np.testing.assert_allclose(
    np.quantile(ratios, [0.1, 0.25, 0.5, 0.75, 0.9]), [0.55, 0.625, 0.75, 0.875, 0.95], atol=0.02
  )
  suffix = np.array([ex["input_ids"][ex["sep"][0] - 1] == SPECIAL.gmask for ex in examples])
  # Non-suffix spans may still end at the end by chance (probability ~ 1 / (n - length + 1)).
  assert 0.3 <= suffix.mean() < 0.36


def test_span_order_in_part_b_is_shuffled():
  rng = np.random.default_rng(3)
  in_text_order = []
  for _ in range(400):
    doc = np.arange(FIRST_TEXT_ID, FIRST_TEXT_ID + 14, dtype=np.int32)  # 14 tokens, two sentences
    (ex,) = bi.corrupt_sentences(doc, np.array([7, 7]), rng, max_length=64, special=SPECIAL, mask_ratio=0.6)
    positions = [p for p, _ in example.split(ex)[1]]
    assert len(positions) == 2
    in_text_order.append(positions == sorted(positions))
  assert 0.4 < np.mean(in_text_order) < 0.6


@pytest.mark.parametrize("objective", ["tokens", "sentences", "document"])
def test_deterministic_given_the_generator(objective):
  doc = np.random.default_rng(0).integers(FIRST_TEXT_ID, 5000, 3000).astype(np.int32)

  def run(seed):
    rng = np.random.default_rng(seed)
    if objective == "tokens":
      return bi.corrupt_tokens(doc, rng, max_length=128, special=SPECIAL)
    if objective == "sentences":
      return bi.corrupt_sentences(doc, np.full(100, 30), rng, max_length=128, special=SPECIAL)
    return bi.corrupt_document(doc, rng, max_length=128, special=SPECIAL, suffix_prob=0.5)

  def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in example.FEATURES)

  assert same(run(7), run(7))
  assert not same(run(7), run(8))


def corrupt_all(doc, rng, max_length, stats):
  return {
    SPECIAL.mask: bi.corrupt_tokens(doc, rng, max_length=max_length, special=SPECIAL, stats=stats),
    SPECIAL.smask: bi.corrupt_sentences(
      doc, np.array([doc.size]), rng, max_length=max_length, special=SPECIAL, stats=stats
    ),
    SPECIAL.gmask: bi.corrupt_document(doc, rng, max_length=max_length, special=SPECIAL, stats=stats),
  }


def test_empty_document_yields_nothing_and_is_counted():
  stats = bi.CorruptionStats()
  for examples in corrupt_all(np.zeros(0, np.int32), np.random.default_rng(0), 32, stats).values():
    assert examples == []
  assert stats == bi.CorruptionStats(documents=3, empty_documents=3)


@pytest.mark.parametrize("max_length", [4, 5, 512])
def test_one_token_document_gets_a_minimal_span(max_length):
  doc = np.array([100], np.int32)
  stats = bi.CorruptionStats()
  for mask_id, examples in corrupt_all(doc, np.random.default_rng(0), max_length, stats).items():
    (ex,) = examples
    check_document(doc, examples, max_length, mask_id)
    np.testing.assert_array_equal(ex["input_ids"], [SPECIAL.cls, mask_id, SPECIAL.sop, 100])
    np.testing.assert_array_equal(ex["target_ids"], [SPECIAL.cls, mask_id, 100, SPECIAL.eop])
  assert stats == bi.CorruptionStats(documents=3, pieces=3, tokens=3, masked_tokens=3)


def test_document_longer_than_100_times_the_budget_is_fully_kept():
  max_length = 64
  doc = np.random.default_rng(5).integers(FIRST_TEXT_ID, 5000, 100 * max_length + 17).astype(np.int32)
  stats = bi.CorruptionStats()
  for mask_id, examples in corrupt_all(doc, np.random.default_rng(6), max_length, stats).items():
    check_document(doc, examples, max_length, mask_id)
  assert stats.tokens == 3 * doc.size and stats.empty_documents == 0


def test_bad_arguments_name_the_value():
  rng = np.random.default_rng(0)
  doc = np.arange(FIRST_TEXT_ID, FIRST_TEXT_ID + 10, dtype=np.int32)
  with pytest.raises(ValueError, match="max_length=3"):
    bi.corrupt_tokens(doc, rng, max_length=3, special=SPECIAL)
  with pytest.raises(ValueError, match="1-D integer"):
    bi.corrupt_tokens(doc.reshape(2, 5), rng, max_length=32, special=SPECIAL)
  with pytest.raises(ValueError, match="sum to len\\(tokens\\)=10"):
    bi.corrupt_sentences(doc, np.array([3, 3]), rng, max_length=32, special=SPECIAL)
  with pytest.raises(ValueError, match="mask_ratio=0"):
    bi.corrupt_tokens(doc, rng, max_length=32, special=SPECIAL, mask_ratio=0)
  with pytest.raises(ValueError, match="poisson_lambda=0"):
    bi.corrupt_tokens(doc, rng, max_length=32, special=SPECIAL, poisson_lambda=0)
  with pytest.raises(ValueError, match="suffix_prob=2"):
    bi.corrupt_document(doc, rng, max_length=32, special=SPECIAL, suffix_prob=2)


def test_special_ids_from_the_default_vocabulary_and_a_text_round_trip(monkeypatch, tmp_path):
  from glm_jax.data import vocab

  monkeypatch.setenv("GLM_JAX_CACHE", str(tmp_path))
  vocabulary = vocab.default_vocabulary()
  special = example.SpecialIds.from_vocabulary(vocabulary)
  names = ["[pad]", "[eos]", "[CLS]", "[MASK]", "[sMASK]", "[gMASK]", "[sop]", "[eop]"]
  fields = ["pad", "eos", "cls", "mask", "smask", "gmask", "sop", "eop"]
  assert [getattr(special, f) for f in fields] == [example.special_id(vocabulary, name) for name in names]
  assert len({getattr(special, f) for f in fields}) == len(names)
  assert special.dblock == example.special_id(vocabulary, "[dBLOCK]") and special.dblock not in special.masks
  text = "General language models fill in blanks. Each span is predicted left to right, after its own [sop]."
  tokens = np.asarray(vocabulary.encode(text), np.int32)
  examples = bi.corrupt_tokens(tokens, np.random.default_rng(0), max_length=24, special=special)
  assert len(examples) > 1
  rebuilt = np.concatenate([example.reconstruct(ex, special) for ex in examples])
  assert vocabulary.decode(rebuilt.tolist()) == vocabulary.decode(tokens.tolist())


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
  hnp.arrays(np.int64, st.integers(1, 300), elements=st.integers(1, 12)),
  st.integers(4, 300),
  st.sampled_from([0.15, 0.05, 0.5]),
  seeds,
)
def test_sentence_piece_matches_brute_force(lengths, max_length, mask_ratio, seed):
  lengths = np.minimum(lengths, max_length - 3)
  priority = np.random.default_rng(seed).random(lengths.size)
  j, masked = bi._sentence_piece(lengths, priority, max_length, mask_ratio)

  def brute_force():
    for candidate in range(lengths.size, 0, -1):
      size = int(lengths[:candidate].sum())
      need = max(1, math.ceil(mask_ratio * size - 1e-9))
      chosen, covered = [], 0
      for sentence in sorted(range(candidate), key=lambda s: priority[s]):
        if covered >= need:
          break
        chosen.append(sentence)
        covered += lengths[sentence]
      if size + 1 + 2 * len(chosen) <= max_length:
        return candidate, sorted(chosen)

  assert (j, np.flatnonzero(masked).tolist()) == brute_force()


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.integers(1, 2000), st.integers(4, 700), st.sampled_from([0.15, 0.05, 0.5]), seeds)
def test_token_piece_matches_brute_force(remaining, max_length, mask_ratio, seed):
  count = max(1, math.ceil(mask_ratio * min(remaining, max_length - 3) - 1e-9))
  span_lengths = bi.sample_span_lengths(np.random.default_rng(seed), count)
  n, k = bi._token_piece(span_lengths, remaining, max_length, mask_ratio)

  def brute_force():
    for size in range(min(remaining, max_length), 0, -1):
      need = max(1, math.ceil(mask_ratio * size - 1e-9))
      spans = int(np.argmax(np.cumsum(span_lengths) >= need)) + 1
      if size + 1 + 2 * spans <= max_length:
        return size, spans

  assert (n, k) == brute_force()

"""Tests for glm_jax.data.preprocessors: the three objectives inside tf.data, bad input, determinism."""

from __future__ import annotations

import os
import unicodedata

import numpy as np
import pytest
import seqio
import tensorflow as tf

from glm_jax.data import counters, example, preprocessors, vocab
from glm_jax.data.example import FEATURES

L = 32


@pytest.fixture(scope="session")
def default_vocab(tmp_path_factory):
  os.environ["GLM_JAX_CACHE"] = str(tmp_path_factory.getbasetemp() / "glm_jax_cache")
  return vocab.default_vocabulary()


def _features(vocabulary):
  return {
    name: seqio.Feature(
      vocabulary
      if name.endswith("_ids") and "position" not in name and name != "sep"
      else seqio.PassThroughVocabulary(1),
      add_eos=False,
    )
    for name in FEATURES
  }


LONG = " ".join(f"Sentence {i} of a very long document goes on." for i in range(400))  # > 100 x L tokens
DOCUMENTS = [
  "The if statement is used for conditional execution. It selects exactly one of the suites! Then? Done.",
  "",
  "   \n\n  ",
  "Hi",
  b"Invalid \xff\xfe UTF-8 here.",
  LONG,
  "A second paragraph.\n\nStarts here and ends here.",
]
VALID = [d for d in DOCUMENTS if isinstance(d, str) and d.strip()]
OBJECTIVES = [
  preprocessors.TokenObjective(),
  preprocessors.SentenceObjective(),
  preprocessors.SentenceObjective(split="text"),
  preprocessors.DocumentObjective(),
]


def _objective_id(objective) -> str:
  return objective.name + ("-text" if getattr(objective, "split", "tokens") == "text" else "")


def _run(objective, vocabulary, seed=7, documents=DOCUMENTS, length=L):
  ds = tf.data.Dataset.from_tensor_slices({"text": tf.constant(documents, tf.string)})
  with seqio.utils.map_seed_manager(seed):
    out = preprocessors.blank_infilling_preprocessor(ds, {"input_ids": length}, _features(vocabulary), objective)
  return list(out.as_numpy_iterator())


def _doc_tokens(objective, vocabulary, text: str) -> np.ndarray:
  """The oracle: the document's tokens as the objective tokenizes it (the whole document; sentence by sentence for
  SentenceObjective(split="text"))."""
  if isinstance(objective, preprocessors.SentenceObjective) and objective.split == "text":
    sentences = [s.decode() for s in preprocessors.split_sentences(tf.constant(text)).numpy()]
    return np.array(sum((vocabulary.encode(s) for s in sentences), []), np.int32)
  return np.array(vocabulary.encode(text), np.int32)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=_objective_id)
def test_examples_reconstruct_every_document_and_bad_input_is_counted(objective, default_vocab):
  counters.reset()
  examples = _run(objective, default_vocab)
  special = example.SpecialIds.from_vocabulary(default_vocab)
  for ex in examples:
    assert {k: v.dtype for k, v in ex.items()} == {
      name: np.float32 if name == "loss_mask" else np.int32 for name in FEATURES
    }
    assert 1 <= ex["input_ids"].size <= L and all(ex[name].size == ex["input_ids"].size for name in FEATURES)
  # Documents stay in order and their pieces are consecutive, so the pieces rebuild the valid documents.
  rebuilt = np.concatenate([example.reconstruct(ex, special) for ex in examples])
  expected = np.concatenate([_doc_tokens(objective, default_vocab, d) for d in VALID])
  np.testing.assert_array_equal(rebuilt, expected)
  prefix = objective.name + "/"
  assert counters.snapshot(prefix) == {
    prefix + "documents": len(DOCUMENTS),
    prefix + "empty_documents": 2,
    prefix + "invalid_utf8": 1,
    prefix + "long_documents": 1,
    prefix + "examples": len(examples),
  }


@pytest.mark.parametrize("objective", OBJECTIVES, ids=_objective_id)
def test_same_seed_same_examples(objective, default_vocab):
  first, again, other = (_run(objective, default_vocab, seed) for seed in (1, 1, 2))
  assert len(first) == len(again)
  for a, b in zip(first, again):
    for name in FEATURES:
      np.testing.assert_array_equal(a[name], b[name])
  assert any(not np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other))


def test_objective_settings_change_the_examples(default_vocab):
  def masked_fraction(objective):
    examples = _run(objective, default_vocab, documents=[LONG])
    spans = sum(int((ex["block_position_ids"] == 1).sum()) for ex in examples)
    masked = sum(float(ex["loss_mask"].sum()) for ex in examples) - spans  # B minus one [sop] per span
    tokens = sum(ex["input_ids"].size - 1 for ex in examples) - 2 * spans  # minus [CLS], a mask and [sop]
    return masked / tokens

  assert masked_fraction(preprocessors.TokenObjective(mask_ratio=0.5)) > 0.45
  assert masked_fraction(preprocessors.TokenObjective()) < 0.25
  short = _run(preprocessors.DocumentObjective(max_length=16), default_vocab, documents=[LONG])
  assert max(ex["input_ids"].size for ex in short) == 16
  masks = {example.special_id(default_vocab, name) for name in ("[MASK]", "[sMASK]", "[gMASK]")}
  used = {int(t) for ex in short for t in ex["input_ids"][: ex["sep"][0]] if t in masks}
  assert used == {example.special_id(default_vocab, "[gMASK]")}


def test_max_length_flows_from_the_sequence_length():
  assert preprocessors.resolve_max_length(preprocessors.TokenObjective(), {"input_ids": 64}) == 64
  assert preprocessors.resolve_max_length(preprocessors.TokenObjective(max_length=32), {"input_ids": 64}) == 32
  with pytest.raises(ValueError, match="exceeds the task sequence length 64"):
    preprocessors.resolve_max_length(preprocessors.SentenceObjective(max_length=65), {"input_ids": 64})
  with pytest.raises(ValueError, match="task_feature_lengths"):
    preprocessors.resolve_max_length(preprocessors.DocumentObjective(), None)


def test_split_sentences():
  text = 'One. Two! "Three?" Four (five.) Six\n\nSeven e.g. 3.5 stays'
  got = [s.decode() for s in preprocessors.split_sentences(tf.constant(text)).numpy()]
  assert got == ["One.", "Two!", '"Three?"', "Four (five.)", "Six", "Seven e.g.", "3.5 stays"]
  assert unicodedata.normalize("NFC", " ".join(got)) == " ".join(text.split())


def test_sentences_end_after_the_tokens_holding_an_end_mark(default_vocab):
  ends = preprocessors.sentence_end_ids(default_vocab)
  special = example.SpecialIds.from_vocabulary(default_vocab)
  ids = [special.cls, special.eos, special.mask, special.smask, special.gmask, special.sop, special.eop]
  assert not ends[ids].any()
  tokens = np.array(default_vocab.encode("One cat sat. Two sat! Why? Because: fine; end"), np.int32)
  lengths = preprocessors.sentence_lengths_of(tokens, ends)
  assert lengths.sum() == tokens.size
  pieces = np.split(tokens, np.cumsum(lengths)[:-1])
  assert [default_vocab.decode(p.tolist()).strip() for p in pieces] == ["One cat sat.", "Two sat!", "Why?", "Because:",
                                                                        "fine;", "end"]  # fmt: skip
  assert preprocessors.sentence_lengths_of(np.zeros(0, np.int32), ends).tolist() == []
  with pytest.raises(ValueError, match="split='words'"):
    preprocessors.SentenceObjective(split="words")


GPT2_FILES = [os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "vocab", f) for f in
              ("gpt2-vocab.json", "gpt2-merges.txt")]  # fmt: skip


@pytest.mark.skipif(not os.path.exists(GPT2_FILES[0]), reason="the GPT-2 vocabulary is not in ../shared/vocab")
def test_with_gpt2_bpe_the_sentence_objective_keeps_the_documents_tokens_exactly():
  """The reference tokenizes a document once and splits it on token strings; tokenizing each sentence alone would
  drop the leading-space token of every sentence but the first ('ĠThe' -> 'The')."""
  pytest.importorskip("tokenizers")
  from glm_jax.data import tokenizers

  gpt2 = tokenizers.gpt2_bpe(*GPT2_FILES)
  text = "The first sentence ends here. The second one too! And a third?"
  special = example.SpecialIds.from_vocabulary(gpt2)
  examples = _run(preprocessors.SentenceObjective(), gpt2, documents=[text], length=64)
  rebuilt = np.concatenate([example.reconstruct(ex, special) for ex in examples])
  np.testing.assert_array_equal(rebuilt, gpt2.encode(text))
  assert sum(len(ex["input_ids"]) for ex in examples) > 0 and any(
    np.any(ex["input_ids"] == special.smask) for ex in examples
  )
  # What tokenizing each sentence alone gives instead: other tokens.
  sentences = [s.decode() for s in preprocessors.split_sentences(tf.constant(text)).numpy()]
  assert sum((gpt2.encode(s) for s in sentences), []) != gpt2.encode(text)


def test_short_documents_come_at_their_rate_with_uniform_budgets(default_vocab):
  """--short-seq-prob: a document's budget is U{32..L-2} with this probability, else L; none drawn at 0."""
  objective = preprocessors.TokenObjective(short_seq_prob=0.25)
  rng = np.random.default_rng(3)
  budgets = np.array([preprocessors.short_budget(objective, 512, rng) for _ in range(8000)])
  short = budgets[budgets < 512]
  assert abs(short.size / budgets.size - 0.25) < 0.02
  assert short.min() >= 32 and short.max() <= 510 and abs(short.mean() - (32 + 510) / 2) < 8
  untouched = np.random.default_rng(3)
  assert preprocessors.short_budget(preprocessors.TokenObjective(), 512, untouched) == 512
  assert untouched.random() == np.random.default_rng(3).random()  # no draw at probability 0
  # Through the preprocessor: every example of a short document fits its budget.
  examples = _run(preprocessors.TokenObjective(short_seq_prob=1.0), default_vocab, documents=[LONG], length=128)
  assert max(ex["input_ids"].size for ex in examples) <= 126
  with pytest.raises(ValueError, match="short_seq_prob=2"):
    preprocessors.short_budget(preprocessors.DocumentObjective(short_seq_prob=2), 512, rng)


@pytest.mark.parametrize(
  "objective",
  [
    preprocessors.TokenObjective(eos=True),
    preprocessors.SentenceObjective(eos=True),
    preprocessors.DocumentObjective(eos=True, suffix_prob=1.0),
    preprocessors.DocumentObjective(eos=True, suffix_prob=0.0, max_ratio=0.5),
  ],
  ids=["token", "sentence", "document-suffix", "document-infill"],
)
def test_documents_end_with_eos_unmasked_or_as_the_suffix_end(objective, default_vocab):
  special = example.SpecialIds.from_vocabulary(default_vocab)
  documents = [VALID[0], LONG]
  examples = _run(objective, default_vocab, documents=documents)
  assert max(ex["input_ids"].size for ex in examples) <= L
  # Each document's examples: the last one carries the [eos], no other does.
  ends = [i for i, ex in enumerate(examples) if special.eos in ex["input_ids"] or special.eos in ex["target_ids"]]
  assert len(ends) == len(documents) and ends[-1] == len(examples) - 1
  suffix = objective.name == "document" and objective.suffix_prob == 1.0
  rebuilt = []
  for i, ex in enumerate(examples):
    sep = int(ex["sep"][0])
    if i in ends and suffix:  # the [gMASK] suffix's target ends with [eos] in place of [eop]
      assert ex["target_ids"][-1] == special.eos and ex["input_ids"][sep - 1] == special.gmask
    elif i in ends:  # the [eos] closes Part A, unmasked, and no span's target ends with it
      assert ex["input_ids"][sep - 1] == special.eos and special.eos not in ex["target_ids"][sep:]
    rebuilt.append(example.reconstruct(ex, special))
  expected = [np.array(default_vocab.encode(d), np.int32) for d in documents]
  if not suffix:
    expected = [np.append(e, special.eos) for e in expected]
  np.testing.assert_array_equal(np.concatenate(rebuilt), np.concatenate(expected))


def test_block_mask_replaces_part_b_inputs_at_its_rate_and_keeps_the_text(default_vocab):
  """--block-mask-prob: each Part B input after a span's [sop] becomes [dBLOCK] at the rate; targets, [sop]s and the
  rebuilt text stay (the reference's rule, blocklm_utils.py:195-198)."""
  special = example.SpecialIds.from_vocabulary(default_vocab)
  assert special.dblock is not None and special.dblock not in default_vocab.encode(LONG)
  plain = _run(preprocessors.TokenObjective(), default_vocab, documents=[LONG], length=128)
  masked = _run(preprocessors.TokenObjective(block_mask_prob=0.3), default_vocab, documents=[LONG], length=128)
  assert len(plain) == len(masked)
  candidates = replaced = 0
  for a, b in zip(plain, masked):
    for name in FEATURES:
      if name != "input_ids":
        np.testing.assert_array_equal(a[name], b[name])
    changed = a["input_ids"] != b["input_ids"]
    assert np.all(b["input_ids"][changed] == special.dblock) and np.all(b["block_position_ids"][changed] >= 2)
    candidates += int(np.count_nonzero(b["block_position_ids"] >= 2))
    replaced += int(np.count_nonzero(changed))
    np.testing.assert_array_equal(example.reconstruct(a, special), example.reconstruct(b, special))
  rate = replaced / candidates
  assert candidates > 1000 and abs(rate - 0.3) < 4 * (0.3 * 0.7 / candidates) ** 0.5
  with pytest.raises(ValueError, match=r"block_mask_prob=1.5 must be in \[0, 1\]"):
    preprocessors.TokenObjective(block_mask_prob=1.5)


def test_block_mask_needs_a_vocabulary_with_dblock(default_vocab):
  class _NoDblock:
    def __init__(self, base):
      self.base = base

    def __getattr__(self, name):
      return getattr(self.base, name)

    @property
    def special_ids(self):
      return {k: v for k, v in self.base.special_ids.items() if k != "[dBLOCK]"}

  with pytest.raises(ValueError, match=r"needs a \[dBLOCK\] token"):
    _run(preprocessors.TokenObjective(block_mask_prob=0.1), _NoDblock(default_vocab), documents=[LONG])


@pytest.mark.parametrize("objective", OBJECTIVES, ids=_objective_id)
def test_documents_batched_together_give_the_examples_each_gives_alone(objective, default_vocab, monkeypatch):
  """Each document keeps its own seqio seed, so DOCUMENT_BATCH changes the cost, never the examples."""
  batched = _run(objective, default_vocab)
  monkeypatch.setattr(preprocessors, "DOCUMENT_BATCH", 1)
  alone = _run(objective, default_vocab)
  assert len(batched) == len(alone)
  for a, b in zip(batched, alone):
    for name in FEATURES:
      np.testing.assert_array_equal(a[name], b[name])
  assert all(np.all(ex["objective_ids"] == example.OBJECTIVES.index(objective.name)) for ex in batched)


@pytest.mark.parametrize(
  "objective",
  [preprocessors.SentenceObjective(task_mask=False), preprocessors.DocumentObjective(task_mask=False, eos=True)],
  ids=["sentence", "document"],
)
def test_without_task_masks_every_blank_is_mask(objective, default_vocab):
  """The reference without --task-mask (GLM-410M/515M): [MASK] for the sentence and document objectives too."""
  special = example.SpecialIds.from_vocabulary(default_vocab)
  examples = _run(objective, default_vocab, documents=[VALID[0], LONG])
  blanks = {int(t) for ex in examples for t in ex["input_ids"][: ex["sep"][0]] if t in special.masks}
  assert blanks == {special.mask}
  assert all(np.all(ex["objective_ids"] == example.OBJECTIVES.index(objective.name)) for ex in examples)
  rebuilt = np.concatenate([example.reconstruct(ex, special) for ex in examples])
  expected = [np.array(default_vocab.encode(d), np.int32) for d in (VALID[0], LONG)]
  if objective.name == "sentence":
    np.testing.assert_array_equal(rebuilt, np.concatenate(expected))
  else:  # a document's [eos] ends its last [MASK] suffix as it ends a [gMASK] one
    assert sum(ex["target_ids"][-1] == special.eos for ex in examples) == 2

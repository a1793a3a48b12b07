"""Seq2seq rows (glm_jax.data.seq2seq) against the THUDM reference's tasks/seq2seq/dataset.py layout, and the
plain-text source's reading and clean-up."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from glm_jax.data import counters, example, seq2seq, vocab


@pytest.fixture(scope="module")
def vocabulary():
  return vocab.default_vocabulary()


def _ids(vocabulary):
  return example.SpecialIds.from_vocabulary(vocabulary)


def test_a_row_is_the_references_layout_written_out(vocabulary):
  ids = _ids(vocabulary)
  source, target = "The module reads files.", "It reads."
  enc = vocabulary.encode
  # The reference (dataset.py, Seq2SeqDataset.__getitem__ for train): [ENC] [MASK] " Content:" " " + source, no
  # [eos]; then [sop] + (" " + target + [eop]), positions: Part A 0..n-1, Part B all at the mask (1), block 1..m.
  part_a = [ids.cls, ids.mask, *enc(" Content:"), *enc(" The module reads files.")]
  target_tokens = [*enc(" It reads."), ids.eop]
  row, source_cut, target_cut = seq2seq.example(
    source, target, vocabulary, ids, mask="[MASK]", max_src_length=64, max_tgt_length=16
  )
  assert not source_cut and not target_cut
  n, m = len(part_a), len(target_tokens)
  np.testing.assert_array_equal(row["input_ids"], [*part_a, ids.sop, *target_tokens[:-1]])
  np.testing.assert_array_equal(row["target_ids"][n:], target_tokens)
  np.testing.assert_array_equal(row["loss_mask"], [0] * n + [1] * m)
  np.testing.assert_array_equal(row["position_ids"], [*range(n), *[1] * m])
  np.testing.assert_array_equal(row["block_position_ids"], [0] * n + list(range(1, m + 1)))
  np.testing.assert_array_equal(row["sep"], [n] * (n + m))  # Part A unpadded: no real token sees padding
  task_mask, _, _ = seq2seq.example(source, target, vocabulary, ids, mask="[sMASK]", max_src_length=64,
                                    max_tgt_length=16)  # fmt: skip
  assert task_mask["input_ids"][1] == ids.smask and ids.mask not in task_mask["input_ids"]


def test_long_sources_and_targets_are_cut_as_the_reference_cuts_them(vocabulary):
  ids = _ids(vocabulary)
  source = " ".join(["word"] * 100)
  target = " ".join(["summary"] * 30)
  prompt = [ids.cls, ids.mask, *vocabulary.encode(" Content:")]
  row, source_cut, target_cut = seq2seq.example(
    source, target, vocabulary, ids, mask="[MASK]", max_src_length=20, max_tgt_length=8
  )
  assert source_cut and target_cut
  n = int(row["sep"][0])
  assert n == 20 and row["input_ids"][:n].tolist() == (prompt + vocabulary.encode(" " + source))[:20]
  # (tokens + [eop])[:8]: eight target tokens, no [eop]; inputs [sop] + the first seven.
  tokens = vocabulary.encode(" " + target)
  assert row["target_ids"][n:].tolist() == tokens[:8] and ids.eop not in row["target_ids"][n:]
  assert row["input_ids"][n:].tolist() == [ids.sop, *tokens[:7]]
  for room, cut in ((len(tokens) + 1, False), (len(tokens), True)):  # tokens + [eop] fit exactly, or lose [eop]
    row, _, target_cut = seq2seq.example(source, target, vocabulary, ids, mask="[MASK]", max_src_length=20,
                                         max_tgt_length=room)  # fmt: skip
    assert target_cut == cut and (row["target_ids"][-1] == ids.eop) != cut and row["input_ids"].size == 20 + room
  with pytest.raises(ValueError, match="no room for the source"):
    seq2seq.part_a(source, vocabulary, ids, mask="[MASK]", max_src_length=len(prompt))
  with pytest.raises(ValueError, match="one of"):
    seq2seq.part_a(source, vocabulary, ids, mask="[gMASK]", max_src_length=20)


def test_plain_text_is_read_cleaned_and_bad_lines_skipped_and_counted(tmp_path):
  (tmp_path / "train.source").write_text("\u201cA\u201d costs \u2013 5.\n\nthird source\n")
  (tmp_path / "train.target").write_text("it\u2019s -lrb- cheap -rrb- UNK\nempty source\n\n")
  before = counters.snapshot().get("seq2seq/gigaword/skipped", 0)
  pairs = seq2seq.read_plain_text(str(tmp_path), "train", "gigaword")
  assert pairs == [('"A" costs - 5.', "it's ( cheap ) [UNK]")]
  assert counters.snapshot()["seq2seq/gigaword/skipped"] - before == 2
  assert seq2seq.read_plain_text(str(tmp_path), "train", "xsum")[0][1] == "it's -lrb- cheap -rrb- UNK"  # no detok
  (tmp_path / "val.source").write_text("one\ntwo\n")
  (tmp_path / "val.target").write_text("one\n")
  with pytest.raises(ValueError, match="val.source has 2 lines but .*val.target has 1"):
    seq2seq.read_plain_text(str(tmp_path), "validation", "xsum")
  with pytest.raises(FileNotFoundError, match="test.source does not exist"):
    seq2seq.read_plain_text(str(tmp_path), "test", "xsum")


VOCAB_DIR = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "vocab"


def _published_vocabularies():
  """The tokenizers of the published checkpoints in ../shared/vocab, with each token's id read from its file."""
  pytest.importorskip("tokenizers")
  from glm_jax.data import tokenizers

  if not (VOCAB_DIR / "gpt2-vocab.json").exists() or not (VOCAB_DIR / "bert-base-uncased-vocab.txt").exists():
    pytest.skip("the published vocabularies are not in ../shared/vocab")
  bert_file = VOCAB_DIR / "bert-base-uncased-vocab.txt"
  bert_ids = {t: i for i, t in enumerate(bert_file.read_text(encoding="utf-8").splitlines())}
  gpt2_ids = json.loads((VOCAB_DIR / "gpt2-vocab.json").read_text(encoding="utf-8"))
  return {
    "bert": (tokenizers.bert_wordpiece(str(bert_file)), bert_ids),
    "gpt2": (tokenizers.gpt2_bpe(str(VOCAB_DIR / "gpt2-vocab.json"), str(VOCAB_DIR / "gpt2-merges.txt")), gpt2_ids),
  }


# The reference's prompt for GLM-Large (BERT, lowercased WordPiece) and GLM-10B (GPT-2 byte-level BPE, "Ġ" a space):
# " Content:" and the source with a leading space.
PUBLISHED_PROMPTS = {
  "bert": ("[MASK]", ["content", ":", "the", "module", "reads", "the"]),
  "gpt2": ("[sMASK]", ["ĠContent", ":", "ĠThe", "Ġmodule", "Ġreads", "Ġthe"]),
}


@pytest.mark.parametrize("family", sorted(PUBLISHED_PROMPTS))
def test_the_prompt_with_the_published_tokenizers(family):
  vocabulary, token_ids = _published_vocabularies()[family]
  ids = _ids(vocabulary)
  mask, tokens = PUBLISHED_PROMPTS[family]
  got = seq2seq.part_a("The module reads the file.", vocabulary, ids, mask=mask, max_src_length=8)
  assert got == [ids.cls, ids.mask if mask == "[MASK]" else ids.smask, *(token_ids[t] for t in tokens)]

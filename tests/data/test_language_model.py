"""Zero-shot LM rows: LAMBADA's and the perplexity windows' layouts equal the reference's (tasks/language_model/
dataset.py with tasks/data_utils.py's build_input_from_ids), written out by hand here; the windows score every token
of a document but its first exactly once; WikiText's detokenization."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from glm_jax.data import language_model as lm
from glm_jax.data.example import SpecialIds

IDS = SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=6, gmask=7, sop=4, eop=5)


def _check(row, input_ids, targets_b, loss_mask, position_ids, block_position_ids, sep):
  np.testing.assert_array_equal(row["input_ids"], input_ids)
  np.testing.assert_array_equal(row["target_ids"][sep:], targets_b)
  np.testing.assert_array_equal(row["loss_mask"], loss_mask)
  np.testing.assert_array_equal(row["position_ids"], position_ids)
  np.testing.assert_array_equal(row["block_position_ids"], block_position_ids)
  np.testing.assert_array_equal(row["sep"], [sep] * len(input_ids))


def test_a_lambada_row_is_the_references_bidirectional_layout():
  # LambadaDataset.__getitem__ (block_lm): tokens = context + [mask]; build_input_from_ids(add_cls, add_piece, and
  # its default add_eos): [CLS] context [mask] [eos] | [sop] answer[:-1], targets the answer, all scored.
  row, cut = lm.lambada_row([11, 12, 13], [21, 22], IDS, mask="[gMASK]", max_length=32, unidirectional=False)
  _check(row, [2, 11, 12, 13, 7, 1, 4, 21], [21, 22], [0, 0, 0, 0, 0, 0, 1, 1], [0, 1, 2, 3, 4, 5, 4, 4],
         [0, 0, 0, 0, 0, 0, 1, 2], 6)  # fmt: skip
  assert cut == 0
  row, _ = lm.lambada_row([11, 12, 13], [21], IDS, mask="[MASK]", max_length=32, unidirectional=False)
  _check(row, [2, 11, 12, 13, 3, 1, 4], [21], [0] * 6 + [1], [0, 1, 2, 3, 4, 5, 4], [0] * 6 + [1], 6)


def test_a_lambada_row_is_the_references_unidirectional_layout():
  # --unidirectional: tokens[:1] + [mask] in Part A, context[1:] + answer in Part B, only the answer scored.
  row, _ = lm.lambada_row([11, 12, 13], [21, 22], IDS, mask="[gMASK]", max_length=32, unidirectional=True)
  _check(row, [2, 11, 7, 1, 4, 12, 13, 21], [12, 13, 21, 22], [0, 0, 0, 0, 0, 0, 1, 1], [0, 1, 2, 3, 2, 2, 2, 2],
         [0, 0, 0, 0, 1, 2, 3, 4], 4)  # fmt: skip


@pytest.mark.parametrize("unidirectional", [False, True])
def test_a_long_lambada_row_loses_its_oldest_context(unidirectional):
  context, answer = list(range(10, 30)), [40, 41]
  row, cut = lm.lambada_row(context, answer, IDS, mask="[gMASK]", max_length=16, unidirectional=unidirectional)
  assert row["input_ids"].size == 16 and cut == 3 + 20 + 2 - 16
  want, _ = lm.lambada_row(context[cut:], answer, IDS, mask="[gMASK]", max_length=64, unidirectional=unidirectional)
  for name in want:
    np.testing.assert_array_equal(row[name], want[name])
  with pytest.raises(ValueError, match="leaves no room for context"):
    lm.lambada_row([10], list(range(40, 60)), IDS, mask="[gMASK]", max_length=16, unidirectional=unidirectional)
  with pytest.raises(ValueError, match="needs a context"):
    lm.lambada_row([], answer, IDS, mask="[gMASK]", max_length=16, unidirectional=unidirectional)


def test_lambada_passages_split_at_their_last_word_the_strict_way():
  calls = []

  def encode(text):
    calls.append(text)
    return [len(calls)]

  assert lm.lambada_tokens(" she gave the book back to  mary ", encode) == ([1], [2])
  assert calls == ["she gave the book back to", " mary"]  # the context stripped, the word with a leading space


GPT2_DIR = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "vocab"


@pytest.mark.skipif(not (GPT2_DIR / "gpt2-vocab.json").exists(), reason="GPT-2 vocabulary not in ../shared/vocab")
def test_a_lambada_passage_with_glm_10b_tokenizer():
  # GLM-10B's byte-level BPE ("Ġ" a space): the last word keeps its space, so it is the token the text would have.
  pytest.importorskip("tokenizers")
  from glm_jax.data import tokenizers

  gpt2 = tokenizers.gpt2_bpe(str(GPT2_DIR / "gpt2-vocab.json"), str(GPT2_DIR / "gpt2-merges.txt"))
  token_ids = json.loads((GPT2_DIR / "gpt2-vocab.json").read_text(encoding="utf-8"))
  context, answer = lm.lambada_tokens("She opened the door and saw her grandmother", gpt2.encode)
  assert context == [token_ids[t] for t in ["She", "Ġopened", "Ġthe", "Ġdoor", "Ġand", "Ġsaw", "Ġher"]]
  assert answer == [token_ids["Ġgrandmother"]]
  assert gpt2.encode("grandmother") != answer  # without the space: other tokens


def test_windows_layout_is_the_references():
  # LMDataset with --seq-length 6 (max_seq_len 5), --overlapping-eval 2, a 10-token document.
  tokens = list(range(100, 110))
  got = lm.windows(len(tokens), seq_length=6, overlap=2)
  assert got == [lm.Window(0, 5, 1), lm.Window(2, 7, 5), lm.Window(4, 9, 7), lm.Window(6, 10, 9)]
  # Window 0: prompt tokens[:1]; the rest its text. add_eos=False: [CLS] t0 [mask] | [sop] t1 t2 t3, targets t1..t4.
  _check(lm.window_row(tokens, got[0], IDS, mask="[gMASK]", unidirectional=False), [2, 100, 7, 4, 101, 102, 103],
         [101, 102, 103, 104], [0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 2, 2, 2, 2], [0, 0, 0, 1, 2, 3, 4], 3)  # fmt: skip
  # Window 1 (idx 1): prompt = tokens[2:2 + 5 - 2], text the last 2; all of Part B scored.
  _check(lm.window_row(tokens, got[1], IDS, mask="[gMASK]", unidirectional=False), [2, 102, 103, 104, 7, 4, 105],
         [105, 106], [0, 0, 0, 0, 0, 1, 1], [0, 1, 2, 3, 4, 4, 4], [0, 0, 0, 0, 0, 1, 2], 5)  # fmt: skip
  # Unidirectional window 1: prompt tokens[2:3]; loss_masks[:-overlap] = 0.
  _check(lm.window_row(tokens, got[1], IDS, mask="[MASK]", unidirectional=True), [2, 102, 3, 4, 103, 104, 105],
         [103, 104, 105, 106], [0, 0, 0, 0, 0, 1, 1], [0, 1, 2, 2, 2, 2, 2], [0, 0, 0, 1, 2, 3, 4], 3)  # fmt: skip
  # The last window is short (4 tokens): its new token is the document's last.
  _check(lm.window_row(tokens, got[3], IDS, mask="[gMASK]", unidirectional=False), [2, 106, 107, 108, 7, 4],
         [109], [0, 0, 0, 0, 0, 1], [0, 1, 2, 3, 4, 4], [0, 0, 0, 0, 0, 1], 5)  # fmt: skip


@pytest.mark.parametrize("unidirectional", [False, True])
@pytest.mark.parametrize("num_tokens,seq_length,overlap", [(10, 6, 2), (37, 9, 3), (8, 16, 4), (50, 11, 9), (2, 4, 1),
                                                            (64, 17, 16), (23, 8, 1)])  # fmt: skip
def test_windows_score_every_token_but_the_first_exactly_once(num_tokens, seq_length, overlap, unidirectional):
  if unidirectional and overlap >= seq_length - 1:
    with pytest.raises(ValueError, match="unidirectional windows need overlap"):
      lm.windows(num_tokens, seq_length, overlap, unidirectional)
    return
  tokens = list(range(1000, 1000 + num_tokens))
  seen = []
  for w in lm.windows(num_tokens, seq_length, overlap, unidirectional):
    row = lm.window_row(tokens, w, IDS, mask="[gMASK]", unidirectional=unidirectional)
    assert row["input_ids"].size <= seq_length + 1
    sep = int(row["sep"][0])
    scored = row["loss_mask"] > 0
    assert not scored[:sep].any()
    seen += [t - 1000 for t in row["target_ids"][scored]]
    # Every scored token reads the window's tokens before it (in Part A, or in Part B before it).
    readable = [t for t in row["input_ids"][1:] if t >= 1000]
    assert readable == tokens[w.start : w.end - 1]
  assert sorted(seen) == seen == list(range(1, num_tokens))


def test_wikitext_detokenization():
  raw = (" = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor . He had a "
         "guest @-@ starring role ( in 2000 ) on \" The Bill \" ; 1 @,@ 000 km or 3 @.@ 5 ° C . \n = = Career = = "
         "\n the players ' union 's N men \n")  # fmt: skip
  want = (
    " = Robert Boulter =\n\nRobert Boulter is an English film, television and theatre actor. He had a "
    "guest-starring role (in 2000) on \"The Bill\"; 1,000 km or 3.5°C.\n== Career ==\nthe players'union's 1 men\n"
  )  # fmt: skip  (the quote rule pairs the apostrophes of "players ' union 's", as the reference's does)
  assert lm.wikitext_detokenize(raw) == want
  # The reference's original-token count splits on single spaces: "a", "", "b", "\n", "c".
  assert lm.original_words(" a  b \n c ") == 5


def test_the_mask_is_the_models_as_the_reference_picks_it():
  assert (lm.mask_token(True), lm.mask_token(False)) == ("[gMASK]", "[MASK]")
  assert lm.current_model_mask() is None
  with lm.model_mask(False):
    assert lm.current_model_mask() == "[MASK]"
    with lm.model_mask(True):
      assert lm.current_model_mask() == "[gMASK]"
  assert lm.current_model_mask() is None

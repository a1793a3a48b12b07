import jax
import numpy as np
import pytest

from glm_jax.data.example import SpecialIds
from glm_jax.infer import infilling
from glm_jax.model import GLM, GLMConfig

IDS = SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=6, gmask=7, sop=4, eop=5)


def test_decode_inputs_layout():
  part_a = [2, 10, 3, 11, 6]  # [CLS] a [MASK] b [sMASK]
  row = infilling.decode_inputs(part_a, [(2, [20, 21]), (4, [])], IDS, length=12)
  np.testing.assert_array_equal(row.features["input_ids"], [2, 10, 3, 11, 6, 4, 20, 21, 4, 0, 0, 0])
  np.testing.assert_array_equal(row.features["position_ids"], [0, 1, 2, 3, 4, 2, 2, 2, 4, 0, 0, 0])
  np.testing.assert_array_equal(row.features["block_position_ids"], [0, 0, 0, 0, 0, 1, 2, 3, 1, 0, 0, 0])
  np.testing.assert_array_equal(row.features["sep"], [5] * 9 + [0] * 3)
  np.testing.assert_array_equal(row.features["segment_ids"], [1] * 9 + [0] * 3)
  assert row.last == 8


def test_fill_blanks_goes_left_to_right_and_conditions_on_earlier_spans():
  seen = []

  def next_token(row):  # span 1: 30, 31, [eop]; span 2: 40s until max_span_length
    seen.append(row.features["input_ids"][: row.last + 1].tolist())
    span_len = int(row.features["block_position_ids"][row.last]) - 1
    if row.features["position_ids"][row.last] == 2:
      return [30, 31, IDS.eop][span_len]
    return 40

  filled, spans = infilling.fill_blanks(next_token, [10, 3, 11, 7], IDS, length=16, max_span_length=3)
  assert spans == [[30, 31], [40, 40, 40]]
  assert filled == [10, 30, 31, 11, 40, 40, 40]
  assert len(seen) == 3 + 3
  part_a = [2, 10, 3, 11, 7]
  assert seen[0] == part_a + [4]
  assert seen[3] == part_a + [4, 30, 31, 4]  # the second span sees the first in Part B


@pytest.mark.slow  # the unpadded oracle compiles once per length
def test_padded_greedy_decode_matches_unpadded_forward():
  cfg = GLMConfig(vocab_size=40, num_layers=2, hidden_size=32, num_heads=4, max_length=32, vocab_multiple=64)
  model = GLM(cfg)
  ids = np.zeros((1, 8), np.int32)
  params = model.init(jax.random.key(3), ids, ids, ids, sep=np.array([8]))["params"]

  def oracle(row):  # direct forward on exactly the real tokens; argmax over the real vocabulary
    n = row.last + 1
    logits = model.apply(
      {"params": params},
      row.features["input_ids"][None, :n],
      row.features["position_ids"][None, :n],
      row.features["block_position_ids"][None, :n],
      sep=row.features["sep"][:1],
    )
    return int(np.argmax(np.asarray(logits[0, -1, : cfg.vocab_size])))

  tokens = [12, 3, 13, 6]
  fast = infilling.fill_blanks(infilling.make_next_token_fn(model, params), tokens, IDS, 32, max_span_length=3)
  slow = infilling.fill_blanks(oracle, tokens, IDS, 32, max_span_length=3)
  assert fast == slow
  assert all(t < cfg.vocab_size for span in fast[1] for t in span)


class _CharVocab:
  """Characters as ids 10.. and the three mask names as single ids (a stand-in with real decode behaviour)."""

  names = {3: "[MASK]", 6: "[sMASK]", 7: "[gMASK]"}

  def decode(self, ids):
    return "".join(self.names.get(i, chr(i)) for i in ids)


def test_splice_spans_keeps_the_text_and_fills_masks_in_order():
  text = "The [MASK] module  works with [gMASK]"
  out = infilling.splice_spans(text, _CharVocab(), IDS, ["os", "paths."])
  assert out == "The os module  works with paths."


def test_splice_spans_gives_up_when_masks_do_not_match_one_for_one():
  assert infilling.splice_spans("no masks here", _CharVocab(), IDS, ["x"]) is None

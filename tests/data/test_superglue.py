"""The SuperGLUE cloze patterns (glm_jax.data.superglue) against the THUDM reference's (tasks/superglue/pvp.py).

Each expected text below was written out by hand from the reference's `get_parts` for that pattern id (its parts
joined, continuous-prompt slots dropped), so a change in a pattern's wording, spacing or punctuation fails here."""

from __future__ import annotations

import pathlib
import types

import pytest

from glm_jax.data import example, superglue

IDS = example.SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7)


def ex(text_a, text_b=None, label=None, **meta):
  return types.SimpleNamespace(text_a=text_a, text_b=text_b, label=label, meta=meta)


BOOLQ = ex("Persian is spoken in Iran.", "is persian spoken in iran", "true")
CB = ex("It rained.", "The ground is wet.", "neutral")
RTE = ex("It rained.", "The ground is wet.", "not_entailment")
COPA = ex("The man broke his toe.", None, 0, choice1="He dropped a hammer.", choice2="He got a hole in his sock.",
          question="cause")  # fmt: skip
MULTIRC = ex("Sam went home. He ate.", "What did Sam do?", 1, answer="He ate")
WIC = ex("He took a seat.", "Take a break.", "false", word="take")
WSC = ex("Mark told Pete many lies about himself, which Pete included in his book.", None, "True", span1_text="Pete",
         span2_text="his", span2_index=11, candidates=["Mark"])  # fmt: skip
RECORD = ex("Obama met Merkel in Berlin.", "@placeholder hosted the talks.", "0", candidates=["Berlin", "Merkel"])
SST2 = ex("a gripping film", None, "1")

CASES = [
  # task, example, pattern id, text, candidates, label index
  ("boolq", BOOLQ, 0, "Persian is spoken in Iran. Question: is persian spoken in iran? Answer:[MASK].",
   (" No", " Yes"), 1),
  ("boolq", BOOLQ, 1, "Persian is spoken in Iran. Question: is persian spoken in iran? Answer:[MASK].",
   (" false", " true"), 1),
  ("boolq", BOOLQ, 2, "Persian is spoken in Iran. Based on the previous passage, is persian spoken in iran?[MASK].",
   (" No", " Yes"), 1),
  ("boolq", BOOLQ, 5, "Based on the following passage is persian spoken in iran?[MASK]. Persian is spoken in Iran.",
   (" false", " true"), 1),
  ("cb", CB, 0, '"The ground is wet" ?[MASK], "It rained."', (" Yes", " No", " Maybe"), 2),
  ("cb", CB, 1, "The ground is wet?[MASK], It rained.", (" Yes", " No", " Maybe"), 2),
  ("cb", CB, 2, '"The ground is wet" ?[MASK]. "It rained."', (" Yes", " No", " Maybe"), 2),
  ("cb", CB, 3, "The ground is wet?[MASK]. It rained.", (" Yes", " No", " Maybe"), 2),
  ("cb", CB, 4, "It rained. question: The ground is wet. true, false or neither? answer:[MASK]",
   (" true", " false", " neither"), 2),
  ("rte", RTE, 0, '"The ground is wet" ?[MASK], "It rained."', (" Yes", " No"), 1),
  ("rte", RTE, 4, "It rained. question: The ground is wet. True or False? answer:[MASK]", (" true", " false"), 1),
  ("copa", COPA, 0, '"he dropped a hammer" or "he got a hole in his sock"? The man broke his toe because[MASK].',
   (" he dropped a hammer", " he got a hole in his sock"), 0),
  ("copa", COPA, 1, "he dropped a hammer or he got a hole in his sock? The man broke his toe because[MASK].",
   (" he dropped a hammer", " he got a hole in his sock"), 0),
  ("multirc", MULTIRC, 0, "Sam went home. He ate. Question: What did Sam do? Is it He ate?[MASK].", (" No", " Yes"), 1),
  ("multirc", MULTIRC, 1, 'Sam went home. He ate. Question: What did Sam do? Is the correct answer "He ate"?[MASK].',
   (" No", " Yes"), 1),
  ("multirc", MULTIRC, 2,
   'Sam went home. He ate. Based on the previous passage, What did Sam do? Is "He ate" a correct answer?[MASK].',
   (" No", " Yes"), 1),
  ("multirc", MULTIRC, 3, "Sam went home. He ate What did Sam do- [[MASK]]He ate", (" False", " True"), 1),
  ("multirc", MULTIRC, 4, "Sam went home. He ate. Question: What did Sam do? He ate?[MASK].", (" No", " Yes"), 1),
  ("wic", WIC, 0, '"He took a seat." / "Take a break." Similar sense of "take"?[MASK].', (" No", " Yes"), 0),
  ("wic", WIC, 1, "He took a seat. Take a break. Does take have the same meaning in both sentences?[MASK]",
   (" No", " Yes"), 0),
  ("wic", WIC, 2, 'take . Sense (1) (a) "He took a seat." ([MASK]) "Take a break."', ("2", "b"), 0),
  ("wsc", WSC, 0,
   "Mark told Pete many lies about himself, which Pete included in *his* book. The pronoun '*his*' refers to[MASK].",
   (" Pete", " Mark"), 0),
  ("wsc", WSC, 2,
   "Mark told Pete many lies about himself, which Pete included in *his* book. Question: In the passage above, what "
   "does the pronoun '*his*' refer to? Answer:[MASK].", (" Pete", " Mark"), 0),
  ("record", RECORD, 0, "Obama met Merkel in Berlin. [MASK] hosted the talks.", (" Berlin", " Merkel"), 0),
  ("sst2", SST2, 0, "a gripping film It was[MASK].", (" terrible", " great"), 1),
  ("sst2", SST2, 1, "a gripping film It was[MASK].", (" bad", " good"), 1),
]  # fmt: skip


@pytest.mark.parametrize("task,item,pattern,text,candidates,label", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_each_pattern_renders_the_references_text(task, item, pattern, text, candidates, label):
  question = superglue.cloze(task, item, pattern)
  assert question.text() == text
  assert question.candidates == candidates and question.label == label
  assert question.multi_token == (task in ("copa", "record", "wsc"))


def test_patterns_and_labels_are_checked():
  assert superglue.PATTERNS["boolq"] == (0, 1, 2, 3, 4, 5) and superglue.PATTERNS["copa"] == (0, 1)
  assert all(superglue.DEFAULT_PATTERNS[t] in superglue.PATTERNS[t] for t in superglue.PATTERNS)
  with pytest.raises(ValueError, match=r"rte has patterns \[0, 1, 2, 3, 4\].*pattern_id=5"):
    superglue.cloze("rte", RTE, 5)
  with pytest.raises(ValueError, match="label 'maybe' is not one of"):
    superglue.cloze("rte", ex("a.", "b.", "maybe"), 0)
  with pytest.raises(ValueError, match="unknown cloze task"):
    superglue.cloze("glue", RTE, 0)
  # Unlabelled (test split) examples; COPA's effect questions; a WSC "False" example has no right candidate.
  assert superglue.cloze("rte", ex("a.", "b."), 0).label is None
  effect = ex("It rained.", None, 1, choice1="A.", choice2="B.", question="effect")
  assert superglue.cloze("copa", effect, 1).text() == "a or b? It rained, so[MASK]."
  wrong = ex("He saw it.", None, "False", span1_text="it", span2_text="He", span2_index=0)
  assert superglue.cloze("wsc", wrong, 0).label is None
  assert superglue.cloze("wsc", wrong, 0).text().startswith("*He* saw it.")


class _Words:
  """A vocabulary of whitespace-separated words (one id each), to see truncation word by word."""

  def __init__(self):
    self.table = {}

  def encode(self, text):
    return [self.table.setdefault(w, 100 + len(self.table)) for w in text.split()]

  def words(self, ids):
    back = {v: k for k, v in self.table.items()}
    return [back.get(i, f"<{i}>") for i in ids]


def test_truncation_cuts_the_side_with_more_shortenable_tokens_from_its_end():
  question = superglue.Cloze(
    (superglue.Part("a b c d e", True), superglue.Part(" Q:"), superglue.Part(superglue.BLANK)),
    (superglue.Part(" x y", True), superglue.Part(" end")),
    (" yes",),
    0,
    False,
  )
  vocab = _Words()
  # [CLS] + 5 + 1 + 1 + 2 + 1 + [eos] + [sop] = 13 positions; a row of 9 removes 4: three from A (5 > 2, 4 > 2,
  # 3 > 2), then one from B (2 = 2: B on a tie).
  part_a, blank, cut = superglue.part_a_ids(question, vocab, IDS, 9, 1)
  assert cut and part_a[0] == IDS.cls and part_a[-1] == IDS.eos and part_a[blank] == IDS.mask
  assert vocab.words(part_a[1:-1]) == ["a", "b", "Q:", "<3>", "x", "end"]
  assert superglue.part_a_ids(question, vocab, IDS, 13, 1)[2] is False
  with pytest.raises(ValueError, match="raise the sequence length"):
    superglue.part_a_ids(question, vocab, IDS, 5, 1)


def test_multi_token_rows_fit_part_a_to_each_candidate():
  question = superglue.cloze("copa", COPA, 0)
  vocab = _Words()
  full = superglue.part_a_ids(question, vocab, IDS, 1000, 1)[0]
  rows = superglue.render(question, vocab, IDS, len(full) + 3)  # room for [sop] + 2 fill tokens
  (a_first, _, fill_first), (a_second, _, fill_second) = rows
  assert vocab.words(fill_first) == ["he", "dropped", "a", "hammer"] and len(fill_second) == 7
  assert len(a_first) + 1 + len(fill_first) <= len(full) + 3 and len(a_second) + 1 + len(fill_second) <= len(full) + 3
  assert len(a_first) > len(a_second)  # the longer fill leaves less of the premise
  single = superglue.Cloze(question.parts_a, (), question.candidates, 0, False)
  with pytest.raises(ValueError, match="not single tokens"):
    superglue.render(single, vocab, IDS, 1000)


VOCAB_DIR = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "vocab"


@pytest.mark.skipif(not (VOCAB_DIR / "gpt2-vocab.json").exists(), reason="GPT-2 vocabulary not in ../shared/vocab")
def test_with_gpt2_the_verbalizers_are_single_tokens_with_their_leading_spaces():
  pytest.importorskip("tokenizers")
  from glm_jax.data import tokenizers

  gpt2 = tokenizers.gpt2_bpe(str(VOCAB_DIR / "gpt2-vocab.json"), str(VOCAB_DIR / "gpt2-merges.txt"))
  for task, item, pattern, *_ in CASES:
    question = superglue.cloze(task, item, pattern)
    if not question.multi_token:
      ids = superglue.candidate_ids(question, gpt2)  # raises unless every verbalizer is one token
      assert len({i[0] for i in ids}) == len(ids)
  assert gpt2.encode(" Yes") != gpt2.encode("Yes")  # the leading space is its own BPE token's part
  gpt2_ids = example.SpecialIds.from_vocabulary(gpt2)
  part_a, blank, _ = superglue.part_a_ids(superglue.cloze("rte", RTE, 0), gpt2, gpt2_ids, 128, 1)
  assert part_a[-1] == gpt2_ids.eos and part_a[blank] == gpt2_ids.mask
  assert gpt2.decode(part_a[1:blank]) == '"The ground is wet" ?'

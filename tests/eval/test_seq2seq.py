"""Seq2seq evaluation: ROUGE as rouge-score computes it (plain, and the reference's sentence filtering), the
reference's tokenization fix-up, and summaries decoded from each source's Part A."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from glm_jax.data import seq2seq as seq2seq_data
from glm_jax.data.example import SpecialIds
from glm_jax.eval import seq2seq
from glm_jax.infer import DecodeOptions, generate

PREDICTIONS = ["the cats were sitting on the mat", "a dog ran home quickly", "nothing in common here"]
REFERENCES = ["the cat sat on the mat", "the dog runs home", "completely different words"]


def test_plain_rouge_is_rouge_score_averaged():
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  direct = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES)]
  got = seq2seq.rouge(PREDICTIONS, REFERENCES)
  for name in ("rouge1", "rouge2", "rougeL"):
    assert got[name] == pytest.approx(sum(s[name].fmeasure for s in direct) / 3)
  assert 0 < got["rouge2"] < got["rouge1"] < 1  # stemmed: "cats"/"cat", "runs"/"ran" differ
  with pytest.raises(ValueError, match="2 predictions for 3 references"):
    seq2seq.rouge(PREDICTIONS[:2], REFERENCES)


def test_the_references_way_drops_short_and_repeated_sentences_and_scores_rouge_lsum():
  prediction = (
    "the cat sat on the mat today [SEP] too short here [SEP] the cat sat on the mat again today "
    "[SEP] a dog barked at the postman loudly"
  )
  reference = "the cat sat on the mat [SEP] a dog barked at the postman"
  got = seq2seq.rouge([prediction], [reference], style="none")
  # By hand: "too short here" has 3 words (<= 4); the third sentence shares 7 of its 8 distinct words with the first.
  kept = "the cat sat on the mat today\na dog barked at the postman loudly"
  ref = "the cat sat on the mat\na dog barked at the postman"
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
  direct = scorer.score(ref, kept)
  assert got == pytest.approx({"rouge1": direct["rouge1"].fmeasure, "rouge2": direct["rouge2"].fmeasure,
                               "rougeL": direct["rougeLsum"].fmeasure})  # fmt: skip
  assert seq2seq.reference_sentences(prediction, "none", prediction=True) == kept
  with pytest.raises(ValueError, match="ROUGE style"):
    seq2seq.rouge(PREDICTIONS, REFERENCES, style="bleu")


@pytest.mark.parametrize(
  "text,fixed",
  [
    ('he said " yes " and left', "he said `` yes '' and left"),
    ("they don ' t know", "they do n't know"),
    ("the cat ' s toy and we ' ll go", "the cat 's toy and we 'll go"),
    ("a ' quoted ' word", "a ` quoted ' word"),
    ("wait . . . what", "wait ... what"),
    ("$ 3 , 000 and 3 . 03 %", "$ 3,000 and 3.03 %"),
    ("the U . N . S . said", "the U.N.S. said"),
    ("a well - known - - fact -", "a well-known -- fact -"),
    ("- start and end -", "- start and end -"),
  ],
)
def test_the_ptb_fix_up_of_decoded_text(text, fixed):
  assert seq2seq.fix_tokenization(text, "ptb") == fixed


def test_gigaword_and_none_fix_ups():
  assert seq2seq.fix_tokenization("the [UNK] said", "gigaword") == "the UNK said"
  assert seq2seq.fix_tokenization("don ' t", "none") == "don ' t"


def test_summaries_fill_each_sources_part_a_in_batches(default_vocabulary_glm):
  vocabulary, model, params = default_vocabulary_glm(3, 64)
  ids = SpecialIds.from_vocabulary(vocabulary)
  sources = ["the parser reads the file", "each class writes the stream and closes it", "values are returned"]
  options = DecodeOptions(strategy="beam", num_beams=2, max_span_length=6, no_repeat_ngram_size=2)
  got = seq2seq.summarize(model, params, vocabulary, sources, mask="[sMASK]", max_src_length=24, options=options,
                          batch_size=2)  # fmt: skip
  for source, summary in zip(sources, got):
    prompt = seq2seq_data.part_a(source, vocabulary, ids, mask="[sMASK]", max_src_length=24)
    (alone,) = generate(model, params, [prompt], ids=ids, options=options)
    assert summary == vocabulary.decode(alone.spans[0])
  assert seq2seq.decode_options("xsum") == DecodeOptions(strategy="beam", num_beams=6, length_penalty=1.0,
                                                         min_span_length=10, max_span_length=60,
                                                         no_repeat_ngram_size=3)  # fmt: skip

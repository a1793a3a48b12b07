"""Seq2seq (summarization) evaluation: each source's Part A (glm_jax.data.seq2seq.part_a) filled by beam search with
glm_jax.infer.generate, scored with ROUGE-1/2/L by the `rouge-score` package.

Two ways to score (`rouge(..., style=...)`):
  plain (None)  rouge1, rouge2 and rougeL of each prediction against its reference text, Porter-stemmed,
                averaged over examples: what a reader of the ROUGE literature expects.
  the reference's (tasks/seq2seq/evaluate.py, rouge_metric), `style` its tokenization fix-up:
                "ptb" (the reference's choice for a BERT-WordPiece model: its decoded text put back into PTB
                tokens, `fix_tokenization`), "gigaword" (`[UNK]` back to `UNK`) or "none"; predictions and
                references split into sentences at `[SEP]`, predicted sentences of at most 4 words dropped and
                later sentences sharing more than 70% of their words with the earlier ones dropped, then rougeLsum
                over the sentences (one a line) for ROUGE-L. Not copied: its per-sentence F1 filter, which
                compares against `> 1.0` and so never drops anything, and its acronym loop, which looks one
                token past the letter it checks ("U . N . S ." is "U.N.S." here).
The reference scores against the target as its tokenizer gives it back (`decode(encode(target))`); so does
`references_as_tokenized`.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence

from glm_jax.data import seq2seq
from glm_jax.data.example import SpecialIds
from glm_jax.infer import DecodeOptions, generate
from glm_jax.model import GLM

STYLES = (None, "ptb", "gigaword", "none")
SENTENCE_SEPARATOR = "[SEP]"
MIN_SENTENCE_WORDS = 5  # the reference drops predicted sentences of 4 words or fewer
DUPLICATE_RATE = 0.7


def decode_options(dataset: str, max_tgt_length: int | None = None, **overrides) -> DecodeOptions:
  """The reference's beam search for a dataset (config_tasks/seq_*.sh: --num-beams, --length-penalty,
  --min-tgt-length, --no-repeat-ngram-size 3, --select-topk; a span of at most --tgt-seq-length tokens,
  `max_tgt_length` if given); for another dataset DecodeOptions' beam search with spans of `max_tgt_length`.
  `overrides`: DecodeOptions fields."""
  d = seq2seq.DATASETS.get(dataset)
  settings = {"strategy": "beam"}
  if d is not None:
    settings.update(num_beams=d.num_beams, length_penalty=d.length_penalty, min_span_length=d.min_tgt_length,
                    max_span_length=d.max_tgt_length, no_repeat_ngram_size=d.no_repeat_ngram_size)  # fmt: skip
  if max_tgt_length is not None:
    settings["max_span_length"] = max_tgt_length
  elif d is None:
    raise ValueError(f"{dataset} has no reference settings: give max_tgt_length")
  return DecodeOptions(**{**settings, **overrides})


def summarize(
  model: GLM,
  params,
  vocabulary,
  sources: Sequence[str],
  *,
  mask: str,
  max_src_length: int,
  options: DecodeOptions,
  batch_size: int = 8,
  progress: bool = False,
) -> list[str]:
  """The model's summary of each source: its Part A's blank filled by `options` (batch_size sources a call)."""
  ids = SpecialIds.from_vocabulary(vocabulary)
  prompts = [seq2seq.part_a(s, vocabulary, ids, mask=mask, max_src_length=max_src_length) for s in sources]
  starts = range(0, len(prompts), batch_size)
  if progress:
    from tqdm import tqdm

    starts = tqdm(starts, desc="decoding", unit="batch", total=len(starts))
  out = []
  for start in starts:
    for generation in generate(model, params, prompts[start : start + batch_size], ids=ids, options=options):
      out.append(vocabulary.decode(generation.spans[0]))
  return out


def references_as_tokenized(targets: Sequence[str], vocabulary) -> list[str]:
  """Each target as the tokenizer gives it back (the reference's meta["ref"])."""
  return [vocabulary.decode(vocabulary.encode(t)) for t in targets]


def _number(token: str) -> bool:
  return all(c.isdigit() or c == "," for c in token)


def fix_tokenization(text: str, style: str = "ptb") -> str:
  """Decoded text back into PTB-style tokens, as the reference's fix_tokenization does for `style` "ptb": quotes as
  `` '' ` ', "n ' t" -> "n't", "' s" -> "'s", ". . ." -> "...", "3 , 000" -> "3,000", "3 . 03" -> "3.03",
  "U . N ." -> "U.N.", "- -" -> "--", "well - known" -> "well-known". "gigaword": "[UNK]" -> "UNK"; "none": as is."""
  if style == "none":
    return text
  if style == "gigaword":
    return text.replace("[UNK]", "UNK")
  if style != "ptb":
    raise ValueError(f"tokenization style {style!r}: expected ptb, gigaword or none")
  words, out = text.split(), []
  double_open = single_open = joining = False
  i = 0
  while i < len(words):
    word, after = words[i], words[i + 1 : i + 3]
    joined = False
    step = 1
    if word == '"':
      out.append("''" if double_open else "``")
      double_open = not double_open
    elif word == "'" and out and out[-1].endswith("n") and after[:1] == ["t"]:
      out[-1] = out[-1][:-1]
      out.append("n't")
      step = 2
    elif word == "'" and after[:1] and after[0] in ("s", "d", "ll"):
      out.append("'" + after[0])
      step = 2
    elif word == "'":
      out.append("'" if single_open else "`")
      single_open = not single_open
    elif word == "." and after == [".", "."]:
      out.append("...")
      step = 3
    elif word == "," and out and _number(out[-1]) and after[:1] and _number(after[0]):
      out[-1] += "," + after[0]
      step = 2
    elif word == "." and out and out[-1].isdigit() and after[:1] and after[0].isdigit():
      out[-1] += "." + after[0]
      step = 2
    elif (
      word == "."
      and out
      and len(out[-1]) == 1
      and out[-1].isalpha()
      and len(after) == 2
      and len(after[0]) == 1
      and after[0].isalpha()
      and after[1] == "."
    ):
      end = i + 3  # "U . N ." and any further "X .": one token
      while end + 1 < len(words) and len(words[end]) == 1 and words[end].isalpha() and words[end + 1] == ".":
        end += 2
      out[-1] += "".join(words[i:end])
      step = end - i
    elif word == "-":
      if after[:1] == ["-"]:
        out.append("--")
        step = 2
      elif i == 0 or i == len(words) - 1:
        out.append("-")
      elif out[-1] not in string.punctuation and after[0][0] not in string.punctuation:
        out[-1] += "-"
        joined = True
      else:
        out.append("-")
    elif joining and out and word[0] not in string.punctuation:
      out[-1] += word
    else:
      out.append(word)
    joining = joined
    i += step
  return " ".join(out)


def _drop_duplicates(sentences: list[str], rate: float) -> list[str]:
  kept, seen = [], set()
  for sentence in sentences:
    words = set(sentence.lower().split())
    if len(words & seen) / len(words) <= rate:
      kept.append(sentence)
    seen |= words
  return kept


def reference_sentences(text: str, style: str, *, prediction: bool) -> str:
  """A text split at [SEP] and fixed up (`style`), one sentence a line; a prediction also loses its sentences of
  at most 4 words and its near-duplicates (see the module docstring)."""
  sentences = [fix_tokenization(s.strip(), style) for s in text.strip().split(SENTENCE_SEPARATOR)]
  if prediction:
    sentences = [s for s in sentences if len(s.split()) >= MIN_SENTENCE_WORDS]
    sentences = _drop_duplicates(sentences, DUPLICATE_RATE)
  return "\n".join(sentences)


def rouge(predictions: Sequence[str], references: Sequence[str], *, style: str | None = None) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measures (rouge1, rouge2, rougeL) of predictions against references (see the module
  docstring for `style`)."""
  from rouge_score import rouge_scorer

  if style not in STYLES:
    raise ValueError(f"ROUGE style {style!r}: expected one of {STYLES}")
  if len(predictions) != len(references) or not predictions:
    raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
  if style is not None:
    predictions = [reference_sentences(p, style, prediction=True) for p in predictions]
    references = [reference_sentences(r, style, prediction=False) for r in references]
  longest = "rougeL" if style is None else "rougeLsum"
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", longest], use_stemmer=True)
  scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
  names = {"rouge1": "rouge1", "rouge2": "rouge2", longest: "rougeL"}
  return {ours: sum(s[theirs].fmeasure for s in scores) / len(scores) for theirs, ours in names.items()}


def write_predictions(path: str, sources: Sequence[str], predictions: Sequence[str], references: Sequence[str]):
  """One JSON line per example: source, prediction, reference."""
  from etils import epath

  lines = [
    json.dumps({"source": s, "prediction": p, "reference": r}) for s, p, r in zip(sources, predictions, references)
  ]
  epath.Path(path).write_text("\n".join(lines) + "\n")

"""seqio preprocessors for GLM's three blank-infilling objectives, running the numpy core inside tf.data.

Each takes documents {"text": tf.string} and yields corrupted examples with the task features of
glm_jax.data.example (input_ids, target_ids, loss_mask, position_ids, block_position_ids, sep, and objective_ids,
the objective's index in example.OBJECTIVES), one
document giving one example per piece (a long document gives many). Per document:
  1. UTF-8 check in-graph (invalid documents are skipped and counted, never fed to the tokenizer);
  2. tokenization with the output feature's vocabulary (`encode_tf`, tensorflow_text ops), of the whole document
     (the sentence objective then splits it after every token whose string holds a sentence-end mark, as the
     reference does; `SentenceObjective.split = "text"` splits the text first and tokenizes each sentence);
  3. one `tf.numpy_function` call that corrupts the tokens with a generator seeded from the document's own
     seqio seed (`seqio.map_over_dataset(num_seeds=1)`): the same `seqio.get_dataset(..., seed=s)` gives the
     same examples;
  4. `unbatch` of the pieces.

The length L: `seqio.get_dataset(task_feature_lengths=feature_converter.task_feature_lengths(L))` hands seqio's
`sequence_length` dict to the preprocessors; an objective's `max_length` is `sequence_length["input_ids"]`
unless the objective sets a smaller one. The objectives are plain dataclasses; tasks/pretrain.py makes them
gin-configurable (`TokenObjective.mask_ratio = 0.2`, ...).

Shutdown: the corruption runs Python inside tf.data threads, so an iterator still alive when the interpreter
finalizes (e.g. a module-level `it = ds.as_numpy_iterator()` over a repeated dataset) can hang the exit; drop
iterators (`del it`, or keep them local to a function) before the process ends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data import blank_infilling, counters, example as example_lib
from glm_jax.data.example import DTYPES, FEATURES, SpecialIds

# A document longer than this many times max_length is counted (it is still used, cut into pieces).
LONG_DOCUMENT_FACTOR = 100
# Documents tokenized and corrupted together (each still with its own seed): the batch is one tf.data element.
DOCUMENT_BATCH = 16

# End of a sentence: terminal punctuation (and closing quotes / brackets) followed by whitespace, or a blank
# line. The break keeps the punctuation with its sentence and drops the whitespace.
_SENTENCE_END = r"([.!?][\"')\]]*)\s+"
_PARAGRAPH_END = r"\n\s*\n"
_BREAK = "\x1f"


@dataclasses.dataclass(frozen=True)
class TokenObjective:
  """Token-level blank infilling (GLM's BERT-like objective): Poisson(λ) spans covering mask_ratio."""

  mask_ratio: float = 0.15
  poisson_lambda: float = 3.0
  max_span_length: int = 39
  max_length: int | None = None  # None: the task's sequence length
  single_span_prob: float = 0.0  # a piece with one Poisson span (the reference's --single-span-prob)
  short_seq_prob: float = 0.0  # see short_budget
  eos: bool = False  # see with_eos
  block_mask_prob: float = 0.0  # Part B inputs -> [dBLOCK] at this rate (blank_infilling.mask_part_b_inputs)

  name = "token"

  def __post_init__(self):
    if not 0.0 <= self.block_mask_prob <= 1.0:
      raise ValueError(f"TokenObjective.block_mask_prob={self.block_mask_prob} must be in [0, 1]")

  def corrupt(self, tokens, sentence_lengths, rng, max_length, special, stats):
    del sentence_lengths
    return blank_infilling.corrupt_tokens(
      tokens,
      rng,
      max_length=max_length,
      special=special,
      mask_ratio=self.mask_ratio,
      poisson_lambda=self.poisson_lambda,
      max_span_length=self.max_span_length,
      single_span_prob=self.single_span_prob,
      stats=stats,
    )


# A token ends a sentence when its string holds one of these (THUDM's blocklm_utils.py contains_sentence_end: a
# substring test on the token's string, so `."`, `...` and GPT-2's `Ġ.` count).
SENTENCE_END_MARKS = (".", "?", "!", ";", ":", "\u3002", "\uff1f", "\uff01", "\uff1b", "\u2026", "\n")
SPLITS = ("tokens", "text")


@dataclasses.dataclass(frozen=True)
class SentenceObjective:
  """Sentence-level blank infilling: whole sentences covering mask_ratio, each replaced by [sMASK].

  split: "tokens" (the reference's way, the default): the document is tokenized once and a sentence ends after every
    token whose string holds one of SENTENCE_END_MARKS, so the document's tokens are kept exactly (with a BPE
    vocabulary every sentence keeps its leading-space token); "text": the text is split at terminal punctuation
    and blank lines and each sentence tokenized alone.
  """

  mask_ratio: float = 0.15
  max_length: int | None = None
  split: str = "tokens"
  short_seq_prob: float = 0.0  # see short_budget
  eos: bool = False  # see with_eos
  task_mask: bool = True  # False: [MASK] instead of [sMASK] (special_ids_of)

  name = "sentence"

  def __post_init__(self):
    if self.split not in SPLITS:
      raise ValueError(f"SentenceObjective.split={self.split!r}; expected one of {SPLITS}")

  def corrupt(self, tokens, sentence_lengths, rng, max_length, special, stats):
    return blank_infilling.corrupt_sentences(
      tokens, sentence_lengths, rng, max_length=max_length, special=special, mask_ratio=self.mask_ratio, stats=stats
    )


@dataclasses.dataclass(frozen=True)
class DocumentObjective:
  """Document-level blank infilling: one [gMASK] span of min_ratio..max_ratio of each piece (a suffix with
  probability suffix_prob)."""

  min_ratio: float = 0.5
  max_ratio: float = 1.0
  suffix_prob: float = 1.0
  max_length: int | None = None
  short_seq_prob: float = 0.0  # see short_budget
  eos: bool = False  # see with_eos
  task_mask: bool = True  # False: [MASK] instead of [gMASK] (special_ids_of)

  name = "document"

  def corrupt(self, tokens, sentence_lengths, rng, max_length, special, stats):
    del sentence_lengths
    return blank_infilling.corrupt_document(
      tokens,
      rng,
      max_length=max_length,
      special=special,
      min_ratio=self.min_ratio,
      max_ratio=self.max_ratio,
      suffix_prob=self.suffix_prob,
      stats=stats,
    )


Objective = TokenObjective | SentenceObjective | DocumentObjective


def special_ids_of(objective: Objective, special: SpecialIds) -> SpecialIds:
  """The special ids an objective writes: with `task_mask=False` the sentence and document objectives blank with
  [MASK] too, as the reference does without --task-mask (blocklm_utils.py:63-66: the BERT-vocabulary models
  GLM-410M/515M were pretrained so); the objective still travels in `objective_ids`."""
  if getattr(objective, "task_mask", True):
    return special
  return dataclasses.replace(special, smask=special.mask, gmask=special.mask)


def resolve_max_length(objective: Objective, sequence_length: Mapping[str, int] | None) -> int:
  """The corruption budget: the objective's max_length, else the task's input_ids length."""
  task_length = (sequence_length or {}).get("input_ids")
  if objective.max_length is None:
    if task_length is None:
      raise ValueError(
        f"the {objective.name} objective needs a sequence length: pass "
        "task_feature_lengths=glm_jax.data.feature_converter.task_feature_lengths(L) to "
        f"seqio.get_dataset, or set {type(objective).__name__}.max_length"
      )
    return int(task_length)
  if task_length is not None and objective.max_length > task_length:
    raise ValueError(
      f"{type(objective).__name__}.max_length={objective.max_length} exceeds the task sequence "
      f"length {task_length}; lower it or raise task_feature_lengths"
    )
  return int(objective.max_length)


def split_sentences(text: tf.Tensor) -> tf.Tensor:
  """Splits a scalar string into sentences [S] (tf.string) at terminal punctuation and blank lines."""
  text = tf.strings.regex_replace(text, _PARAGRAPH_END, _BREAK)
  text = tf.strings.regex_replace(text, _SENTENCE_END, "\\1" + _BREAK)
  return tf.strings.split(text, _BREAK)


def sentence_end_ids(vocabulary: seqio.Vocabulary) -> np.ndarray:
  """bool [vocab_size]: the ids whose token string (the id decoded alone) holds a sentence-end mark; the special
  tokens never do. Computed once per vocabulary object (a LazyVocabulary's current one)."""
  base = getattr(vocabulary, "vocabulary", vocabulary)
  cached = _SENTENCE_ENDS.get(id(base))
  if cached is None or cached[0] is not base:
    special = {v for v in dataclasses.astuple(SpecialIds.from_vocabulary(base)) if v is not None}
    ends = np.zeros(base.vocab_size, bool)
    for i in range(base.vocab_size):
      if i not in special:
        ends[i] = any(mark in base.decode([i]) for mark in SENTENCE_END_MARKS)
    cached = _SENTENCE_ENDS[id(base)] = (base, ends)
  return cached[1]


_SENTENCE_ENDS: dict[int, tuple[object, np.ndarray]] = {}


def sentence_lengths_of(tokens: np.ndarray, ends: np.ndarray) -> np.ndarray:
  """int64 [S]: the lengths of the sentences of `tokens` [N], each ending after a token marked in `ends` (the last one
  wherever the document ends); they sum to N."""
  cuts = np.flatnonzero(ends[tokens]) + 1
  bounds = np.concatenate([[0], cuts[cuts < tokens.size], [tokens.size]]) if tokens.size else np.zeros(1, np.int64)
  return np.diff(bounds).astype(np.int64)


# The shortest budget of a short document (the reference's split_samples draws windows of 32..L-2 tokens).
SHORT_MIN_LENGTH = 32


def short_budget(objective: Objective, max_length: int, rng: np.random.Generator) -> int:
  """The budget of one document: with probability objective.short_seq_prob a uniform length in
  SHORT_MIN_LENGTH..max_length-2 (so the model also learns from short contexts: the reference's --short-seq-prob,
  which cuts a whole micro-batch into windows of that many tokens), else max_length. No draw when the
  probability is 0, so the other examples do not change."""
  p = objective.short_seq_prob
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"{type(objective).__name__}.short_seq_prob={p} must be in [0, 1]")
  if p == 0.0 or max_length - 2 < SHORT_MIN_LENGTH or rng.random() >= p:
    return max_length
  return int(rng.integers(SHORT_MIN_LENGTH, max_length - 1))


def with_eos(examples: list[dict[str, np.ndarray]], special: SpecialIds) -> list[dict[str, np.ndarray]]:
  """The examples of a document that ends with [eos], as the reference's documents do (datasets.py:684-689; the
  examples were made with a budget one token smaller): the [eos] closes the last piece. A [gMASK] suffix of the last
  piece ends with it in place of [eop] (the reference's suffix target ends with the document's last token,
  blocklm_utils.py:411-419); otherwise it is appended to the last piece's Part A, never masked (the reference keeps
  a document's last token out of every span, blocklm_utils.py:128-129)."""
  if not examples:
    return examples
  last = dict(examples[-1])
  sep = int(last["sep"][0])
  if last["input_ids"][sep - 1] == special.gmask and int(np.count_nonzero(last["block_position_ids"] == 1)) == 1:
    last["target_ids"] = last["target_ids"].copy()
    last["target_ids"][-1] = special.eos
  else:
    part_a, spans = example_lib.split(last)
    last = example_lib.from_spans([*part_a.tolist(), special.eos], [(p, t.tolist()) for p, t in spans], special)
  return [*examples[:-1], last]


_OBJECTIVE_LANE = FEATURES.index("objective_ids")


def _seeded_rng(seed: np.ndarray) -> np.random.Generator:
  """A generator from seqio's per-document seed (a pair of int64 that may be negative)."""
  return np.random.default_rng(np.asarray(seed, np.int64).reshape(-1).view(np.uint64))


def _corrupt_fn(objective: Objective, max_length: int, special: SpecialIds, ends: np.ndarray | None = None) -> Callable:
  """The numpy function of one document: flat features of all its pieces and the pieces' lengths. With `ends` (the
  sentence-end ids), the sentence lengths are found in the tokens."""
  prefix = objective.name + "/"
  objective_id = example_lib.OBJECTIVES.index(objective.name)
  block_mask_prob = getattr(objective, "block_mask_prob", 0.0)
  if block_mask_prob and special.dblock is None:
    raise ValueError(
      f"{type(objective).__name__}.block_mask_prob={block_mask_prob} needs a [dBLOCK] token, which this vocabulary "
      "lacks; use one that has it (the default vocabulary, BERT, GPT-2, Chinese SentencePiece) or set it to 0"
    )

  def corrupt(tokens, sentence_lengths, valid_utf8, seed):
    counters.increment(prefix + "documents")
    if ends is not None:
      sentence_lengths = sentence_lengths_of(tokens, ends)
    examples = []
    if not valid_utf8:
      counters.increment(prefix + "invalid_utf8")
    else:
      stats = blank_infilling.CorruptionStats()
      rng = _seeded_rng(seed)
      budget = short_budget(objective, max_length, rng) - int(objective.eos)  # room for the [eos]
      examples = objective.corrupt(tokens, sentence_lengths, rng, budget, special, stats)
      if objective.eos:
        examples = with_eos(examples, special)
      if block_mask_prob:
        examples = [blank_infilling.mask_part_b_inputs(ex, block_mask_prob, special.dblock, rng) for ex in examples]
      counters.increment(prefix + "empty_documents", stats.empty_documents)
      counters.increment(prefix + "long_documents", int(tokens.size > LONG_DOCUMENT_FACTOR * max_length))
      counters.increment(prefix + "examples", len(examples))
    lengths = np.array([ex["input_ids"].size for ex in examples], np.int32)
    flat = [np.concatenate([ex[name] for ex in examples]) if examples else np.zeros([0]) for name in FEATURES]
    flat[_OBJECTIVE_LANE] = np.full(int(lengths.sum()), objective_id)
    return (lengths, *(f.astype(DTYPES[name]) for name, f in zip(FEATURES, flat)))

  return corrupt


def blank_infilling_preprocessor(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int] | None,
  output_features: Mapping[str, seqio.Feature],
  objective: Objective,
) -> tf.data.Dataset:
  """Documents {"text"} -> corrupted examples of `objective` (a seqio preprocessor once `objective` is bound)."""
  vocabulary = output_features["input_ids"].vocabulary
  special = special_ids_of(objective, SpecialIds.from_vocabulary(vocabulary))
  by_text = isinstance(objective, SentenceObjective) and objective.split == "text"
  ends = sentence_end_ids(vocabulary) if isinstance(objective, SentenceObjective) and not by_text else None
  corrupt = _corrupt_fn(objective, resolve_max_length(objective, sequence_length), special, ends)
  out_types = [tf.int32] + [tf.float32 if name == "loss_mask" else tf.int32 for name in FEATURES]

  def corrupt_documents(tokens, doc_lengths, sentence_lengths, sentence_counts, valid_utf8, seeds):
    """The batch's documents one by one (each with its own seed, as alone), their outputs concatenated."""
    doc_ends, sentence_ends = np.cumsum(doc_lengths), np.cumsum(sentence_counts)
    outs = [
      corrupt(
        tokens[doc_ends[i] - doc_lengths[i] : doc_ends[i]],
        sentence_lengths[sentence_ends[i] - sentence_counts[i] : sentence_ends[i]],
        valid_utf8[i],
        seeds[i],
      )
      for i in range(doc_lengths.size)
    ]
    return [np.concatenate(parts) if outs else np.zeros(0, t.as_numpy_dtype) for parts, t in zip(zip(*outs), out_types)]

  # Each document gets its own seqio seed first, so batching does not change its examples.
  @seqio.map_over_dataset(num_seeds=1)
  def with_seed(ex, seed):
    return {"text": ex["text"], "seed": tf.reshape(tf.cast(tf.stack(seed), tf.int64), [2])}

  def corrupt_batch(batch):
    text = batch["text"]  # [B]
    # Transcoding drops invalid bytes, so a valid document is the only one that comes back unchanged.
    valid_utf8 = tf.equal(tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="ignore"), text)
    text = tf.where(valid_utf8, text, "")
    if by_text:
      sentences = vocabulary.encode_tf(split_sentences(text))  # [B, sentences, tokens]
      tokens, doc_lengths = sentences.flat_values, tf.reduce_sum(sentences.row_lengths(axis=2), axis=1)
      sentence_lengths, sentence_counts = sentences.values.row_lengths(), sentences.row_lengths()
    else:
      encoded = vocabulary.encode_tf(text)  # [B, tokens]
      tokens, doc_lengths = encoded.flat_values, encoded.row_lengths()
      sentence_lengths, sentence_counts = doc_lengths, tf.ones_like(doc_lengths)
    lengths, *flat = tf.numpy_function(
      corrupt_documents,
      [tf.cast(tokens, tf.int32), doc_lengths, sentence_lengths, sentence_counts, valid_utf8, batch["seed"]],
      out_types,
      stateful=False,
    )
    lengths.set_shape([None])
    pieces = {}
    for name, values in zip(FEATURES, flat):
      values.set_shape([None])
      pieces[name] = tf.RaggedTensor.from_row_lengths(values, tf.cast(lengths, tf.int64), validate=False)
    return pieces

  # Documents travel in batches of DOCUMENT_BATCH: one tokenizer call and one numpy call per batch, not per
  # document (each call costs about as much as corrupting a few hundred tokens).
  batches = with_seed(dataset).batch(DOCUMENT_BATCH)
  return batches.map(corrupt_batch, num_parallel_calls=tf.data.AUTOTUNE).unbatch()

"""GLM pretraining Tasks and Mixtures: the three blank-infilling objectives over each document source.

Tasks (`glm_{objective}_{source}`, objective in token / sentence / document):
  glm_*_embedded  the embedded corpus (Python's documentation, built offline; glm_jax.data.sources)
  glm_*_facts     one-sentence facts of a small world (glm_jax.data.facts): the quickstart's corpus, with its own
                  default vocabulary (glm_jax.data.vocab.facts_vocabulary)
  glm_*_text      the user's .txt / .jsonl files: glob from $GLM_JAX_TEXT_FILES (validation split: a hashed 5%
                  of the documents, or the files of $GLM_JAX_TEXT_VALIDATION_FILES), or the gin bindings
                  `text_files_config.pattern = '...'`, `text_files_config.validation_pattern = '...'`
  glm_*_c4        TFDS c4/en at `c4_config.version` (default 3.1.0, what TFDS 4.9 builds; a prepared 3.0.1, as T5X
                  and MaxText read, loads too) from `c4_config.data_dir` (default $TFDS_DATA_DIR), checked at the
                  first read (prepare it first: `tfds build c4/en:3.1.0 --data_dir=DIR`)
Mixtures `glm_embedded`, `glm_facts`, `glm_text`, `glm_c4`: the three objectives of one source at the rates of
`glm_mixture_rates` (GLM-10B's 0.5 token / 0.3 sentence / 0.2 document by default).
`register_tfds_tasks(source_name, tfds_name)` adds the same Tasks and Mixture over any other TFDS text dataset.

Gin (bindings apply when a dataset is made, so they may follow `import tasks` in a gin file):
  task_vocabulary.checkpoint   the tokenizer of a converted checkpoint instead of the default vocabulary
  TokenObjective.mask_ratio / .poisson_lambda / .max_span_length / .max_length / .single_span_prob / .block_mask_prob
  SentenceObjective.mask_ratio / .max_length / .split ('tokens': the reference's split of the document's tokens)
  SentenceObjective.task_mask / DocumentObjective.task_mask (False: [MASK] for them too, as without --task-mask)
  DocumentObjective.min_ratio / .max_ratio / .suffix_prob / .max_length
  (every objective) .short_seq_prob (a document's budget U{32..L-2} at that rate) / .eos (documents end with [eos])
  glm_mixture_rates.token / .sentence / .document
  c4_config.version / .data_dir
The sequence length L comes from `seqio.get_dataset(task_feature_lengths=task_feature_lengths(L))`; an
objective's max_length (default None) can only lower it (glm_jax.data.preprocessors.resolve_max_length).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import gin
import seqio
import tensorflow as tf

from glm_jax.data import preprocessors, sources, vocab
from glm_jax.data.example import FEATURES

OBJECTIVES = ("token", "sentence", "document")

TokenObjective = gin.external_configurable(preprocessors.TokenObjective, "TokenObjective")
SentenceObjective = gin.external_configurable(preprocessors.SentenceObjective, "SentenceObjective")
DocumentObjective = gin.external_configurable(preprocessors.DocumentObjective, "DocumentObjective")
_OBJECTIVE_FACTORIES = {"token": TokenObjective, "sentence": SentenceObjective, "document": DocumentObjective}


@gin.configurable
def task_vocabulary(
  checkpoint: str | None = None, default: Callable[[], seqio.Vocabulary] | None = None
) -> seqio.Vocabulary:
  """The vocabulary of every glm_* and cloze Task, read when a dataset is made: the default glm-jax SentencePiece
  vocabulary (or `default()`, the glm_*_facts Tasks' own), or (`task_vocabulary.checkpoint = DIR`) the one kept with
  a checkpoint (a converted THUDM one, whose model.gin binds this, or a train model_dir), so a model trains and is
  evaluated on these Tasks with its own tokenizer and special-token ids."""
  if checkpoint is None:
    return (default or _default_vocabulary)()
  return _checkpoint_vocabulary(checkpoint)


_default_vocabulary = functools.cache(vocab.default_vocabulary)  # read (or trained) once per process
_facts_vocabulary = functools.cache(vocab.facts_vocabulary)


@functools.cache
def _checkpoint_vocabulary(directory: str) -> seqio.Vocabulary:
  from glm_jax.train import checkpoints  # the checkpoint layout's owner

  return checkpoints.load_vocabulary(directory)


VOCABULARY = vocab.LazyVocabulary(task_vocabulary, cache=False)


def output_features(vocabulary: seqio.Vocabulary = VOCABULARY) -> dict[str, seqio.Feature]:
  """The task features of glm_jax.data.feature_converter.GLMFeatureConverter.TASK_FEATURES."""
  features = {}
  for name in FEATURES:
    ids = name in ("input_ids", "target_ids")
    features[name] = seqio.Feature(
      vocabulary if ids else seqio.PassThroughVocabulary(1),
      add_eos=False,
      dtype=tf.float32 if name == "loss_mask" else tf.int32,
    )
  return features


class SerializedSource(seqio.DataSource):
  """Examples read whole when a dataset is made, each one element {"example": its serialization}: `load(split)`
  returns the strings (the fine-tuning Tasks' sources, tasks/superglue.py and tasks/seq2seq.py, whose
  preprocessors parse them). Sharded by example; the Task shuffles."""

  def __init__(self, load, splits):
    self._load = load
    super().__init__(splits=splits, num_input_examples=None, caching_permitted=True)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str):
    return [split]

  def get_dataset(
    self, split="train", shuffle=True, seed=None, shard_info=None, *, sequence_length=None, use_cached=False,
    num_epochs=1,
  ):  # fmt: skip
    del shuffle, seed, sequence_length, use_cached  # one "file"; the Task shuffles examples
    serialized = list(self._load(split))
    ds = tf.data.Dataset.from_tensor_slices({"example": tf.constant(serialized, tf.string, shape=[len(serialized)])})
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds.repeat(num_epochs)


@gin.configurable
def glm_mixture_rates(token: float = 0.5, sentence: float = 0.3, document: float = 0.2) -> dict[str, float]:
  """Sampling rates of the objectives in every GLM mixture (normalized by seqio)."""
  rates = {"token": token, "sentence": sentence, "document": document}
  if any(r < 0 for r in rates.values()) or not sum(rates.values()):
    raise ValueError(f"glm_mixture_rates {rates} must be non-negative with a positive sum")
  return rates


@gin.configurable
def text_files_config(
  pattern: str | None = None, validation_pattern: str | None = None, validation_fraction: float = 0.05
) -> sources.TextFilesConfig:
  """The user's text files; patterns default to $GLM_JAX_TEXT_FILES and $GLM_JAX_TEXT_VALIDATION_FILES."""
  return sources.TextFilesConfig(
    pattern=os.environ.get("GLM_JAX_TEXT_FILES", "") if pattern is None else pattern,
    validation_pattern=(
      os.environ.get("GLM_JAX_TEXT_VALIDATION_FILES", "") if validation_pattern is None else validation_pattern
    ),
    validation_fraction=validation_fraction,
  )


@gin.configurable
def c4_config(version: str = "3.1.0", data_dir: str | None = None) -> tuple[str, str | None]:
  """The TFDS name (with its version) and data_dir of the glm_*_c4 Tasks, read at their first use."""
  return f"c4/en:{version}", data_dir


def objective_preprocessor(
  dataset: tf.data.Dataset, sequence_length, output_features, *, objective: str
) -> tf.data.Dataset:
  """The seqio preprocessor of one objective; its gin-configured settings are read when it runs."""
  return preprocessors.blank_infilling_preprocessor(
    dataset, sequence_length, output_features, _OBJECTIVE_FACTORIES[objective]()
  )


def _rate(objective: str, task: seqio.Task) -> float:
  del task
  return glm_mixture_rates()[objective]


def register_tasks(
  source_name: str, source: seqio.DataSource, first_preprocessors=(), vocabulary: seqio.Vocabulary = VOCABULARY
) -> None:
  """Registers glm_{objective}_{source_name} for each objective and the Mixture glm_{source_name}."""
  for objective in OBJECTIVES:
    seqio.TaskRegistry.add(
      f"glm_{objective}_{source_name}",
      source=source,
      output_features=output_features(vocabulary),
      preprocessors=[*first_preprocessors, functools.partial(objective_preprocessor, objective=objective)],
    )
  seqio.MixtureRegistry.add(
    f"glm_{source_name}",
    [(f"glm_{objective}_{source_name}", functools.partial(_rate, objective)) for objective in OBJECTIVES],
  )


def register_tfds_tasks(source_name: str, tfds_name, text_key: str = "text") -> None:
  """The GLM Tasks and Mixture over a TFDS text dataset: `tfds_name` ("wiki40b/en:1.3.0"), or a function returning
  (name, data_dir), read at the first use. Nothing is read before a dataset is made; then a dataset that TFDS
  cannot load prepared fails with one line saying how to prepare it (glm_jax.data.sources.CheckedTfdsSource)."""
  config = tfds_name if callable(tfds_name) else (lambda: (tfds_name, None))
  register_tasks(
    source_name, sources.CheckedTfdsSource(config), [functools.partial(sources.rename_text, text_key=text_key)]
  )


register_tasks("embedded", sources.EmbeddedCorpusSource())
# Its own default vocabulary (trained with the facts too): the tiny world's words are one piece each.
FACTS_VOCABULARY = vocab.LazyVocabulary(functools.partial(task_vocabulary, default=_facts_vocabulary), cache=False)
register_tasks("facts", sources.FactsSource(), vocabulary=FACTS_VOCABULARY)
register_tasks("text", sources.TextFilesSource(text_files_config))
register_tfds_tasks("c4", c4_config)

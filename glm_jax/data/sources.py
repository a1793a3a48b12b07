"""Document sources for GLM pretraining; every one yields examples {"text": tf.string}, one document each.

  (a) The embedded corpus: the documentation shipped with Python itself (`pydoc_data.topics`, ~465k characters
      of English prose in 79 topics), a TFDS dataset (`GlmEmbeddedCorpus`) built offline under the cache on
      first use. A document is a run of consecutive paragraphs of one topic, at least `MIN_DOCUMENT_CHARS`
      long (a topic shorter than that is one document);
      one document in `VALIDATION_EVERY` (in corpus order) is `validation`, the rest `train`.
  (a') The facts corpus (`FactsSource`): one-sentence facts of a small world (glm_jax.data.facts), the quickstart's
      corpus, on which a filled blank is right or wrong.
  (b) The user's text files (`TextFilesSource`): `.txt` (documents separated by blank lines) and `.jsonl`
      (one {"text": ...} object a line). A document goes to `validation` by a hash of its text (so the split
      is stable across runs and file orders) unless a separate validation glob is given.
  (c) Any TFDS text dataset by name (`tfds_source`, e.g. "c4/en:3.1.0"), via seqio.TfdsDataSource; the glm_*_c4
      Tasks use `CheckedTfdsSource`, which resolves the version at the first read and checks it is loadable.

Malformed input is skipped and counted in glm_jax.data.counters, never raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import logging
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from glm_jax.data import cache_dir, counters, facts, file_lock

log = logging.getLogger(__name__)

MIN_DOCUMENT_CHARS = 1000
VALIDATION_EVERY = 20
SPLITS = ("train", "validation")

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


# (a) The embedded corpus.


def embedded_documents(split: str) -> list[tuple[str, str]]:
  """The (topic, text) documents of one split of the embedded corpus, in a fixed order."""
  from pydoc_data import topics

  _check_split(split)
  documents = [(name, text) for name in sorted(topics.topics) for text in _paragraph_runs(topics.topics[name])]
  return [
    doc for i, doc in enumerate(documents) if (i % VALIDATION_EVERY == VALIDATION_EVERY - 1) == (split == "validation")
  ]


def _paragraph_runs(text: str) -> list[str]:
  """Consecutive paragraphs joined until each run has MIN_DOCUMENT_CHARS; a short tail joins the last run."""
  runs, current = [], []
  for paragraph in _PARAGRAPH_BREAK.split(text.strip()):
    current.append(paragraph)
    if sum(map(len, current)) >= MIN_DOCUMENT_CHARS:
      runs.append("\n\n".join(current))
      current = []
  if current:
    if runs:
      runs[-1] += "\n\n" + "\n\n".join(current)
    else:
      runs.append("\n\n".join(current))
  return runs


def embedded_corpus_fingerprint() -> str:
  """A hash of the embedded corpus: it changes with the Python version, and so do the cache entries."""
  digest = hashlib.sha256()
  for split in SPLITS:
    for name, text in embedded_documents(split):
      digest.update(f"{split}\0{name}\0{text}\0".encode())
  return digest.hexdigest()[:16]


class GlmEmbeddedCorpus(tfds.core.GeneratorBasedBuilder):
  """Python's own documentation (pydoc_data.topics) as a TFDS text dataset; nothing to download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Paragraph runs of pydoc_data.topics; every 20th document is validation."}
  # No download checksums to look up: tfds would locate them through this module's path with
  # `importlib_resources`, which tensorflow-datasets 4.9.10 uses without depending on it.
  _checksums_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="English prose from the Python documentation shipped with the interpreter.",
      features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "topic": tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the corpus is part of the Python installation
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    for i, (topic, text) in enumerate(embedded_documents(split)):
      yield f"{topic}-{i}", {"text": text, "topic": topic}


def embedded_builder() -> GlmEmbeddedCorpus:
  """The embedded corpus builder, prepared (built once per corpus version) under `cache_dir()`."""
  data_dir = cache_dir("tfds", embedded_corpus_fingerprint())
  builder = GlmEmbeddedCorpus(data_dir=data_dir)
  with file_lock(os.path.join(data_dir, ".lock")):
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
      log.info("building the embedded corpus (once) in %s", data_dir)
      # TFDS prints its download report and progress bars; nothing is downloaded here, so they are set aside
      # (and shown if the build fails).
      printed = io.StringIO()
      try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
          builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
      except BaseException:
        sys.stderr.write(printed.getvalue())
        raise
  return GlmEmbeddedCorpus(data_dir=data_dir)


class _DocumentSource(seqio.DataSource):
  """A seqio source of {"text"} documents that shards by element (every process reads the split once)."""

  def __init__(self):
    super().__init__(splits=SPLITS, num_input_examples=None, caching_permitted=True)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def get_dataset(
    self,
    split: str = "train",
    shuffle: bool = True,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    *,
    sequence_length=None,
    use_cached: bool = False,
    num_epochs: int | None = 1,
  ) -> tf.data.Dataset:
    del sequence_length, use_cached
    _check_split(split)
    ds = self._documents(split, shuffle, seed)
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds.repeat(num_epochs)

  def _documents(self, split: str, shuffle: bool, seed: int | None) -> tf.data.Dataset:
    raise NotImplementedError


class EmbeddedCorpusSource(_DocumentSource):
  """seqio source over the embedded corpus TFDS dataset (built lazily, on the first `get_dataset`)."""

  def _documents(self, split, shuffle, seed):
    ds = embedded_builder().as_dataset(
      split=split, shuffle_files=shuffle, read_config=tfds.ReadConfig(shuffle_seed=seed)
    )
    return ds.map(lambda ex: {"text": ex["text"]}, num_parallel_calls=tf.data.AUTOTUNE)


class FactsSource(_DocumentSource):
  """seqio source over the one-sentence documents of glm_jax.data.facts (the quickstart's corpus), made in memory."""

  def _documents(self, split, shuffle, seed):
    ds = tf.data.Dataset.from_tensor_slices({"text": facts.documents(split)})
    return ds.shuffle(facts.SIZES[split], seed=seed) if shuffle else ds


# (b) The user's text files.


@dataclasses.dataclass(frozen=True)
class TextFilesConfig:
  """Where the user's documents are.

  pattern: comma-separated globs of .txt / .jsonl files.
  validation_pattern: globs of validation files; empty: `validation_fraction` of the documents matched by
    `pattern` (chosen by a hash of their text) form the validation split and the rest the train split.
  """

  pattern: str = ""
  validation_pattern: str = ""
  validation_fraction: float = 0.05


def expand_patterns(patterns: str) -> list[str]:
  """The sorted files matched by comma-separated globs."""
  files = set()
  for pattern in filter(None, (p.strip() for p in patterns.split(","))):
    files.update(glob.glob(os.path.expanduser(pattern), recursive=True))
  return sorted(f for f in files if os.path.isfile(f))


def read_documents(path: str) -> Iterator[str]:
  """The documents of one file (.jsonl: {"text"} per line; otherwise text with blank-line separators).

  Skips and counts (glm_jax.data.counters, prefix "text_files/") invalid UTF-8, invalid JSON lines, objects
  without a string "text", empty documents and unreadable files.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError:
    counters.increment("text_files/unreadable_files")
    return
  if path.endswith((".jsonl", ".json")):
    chunks = (_json_text(line) for line in data.splitlines() if line.strip())
  else:
    stripped = data.replace(b"\r\n", b"\n").strip()
    chunks = (_utf8(chunk) for chunk in re.split(rb"\n[ \t]*\n(?:[ \t]*\n)*", stripped)) if stripped else [""]
  for text in chunks:
    if text is None:
      continue
    if not text.strip():
      counters.increment("text_files/empty_documents")
      continue
    counters.increment("text_files/documents")
    yield text


def _utf8(raw: bytes) -> str | None:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    counters.increment("text_files/invalid_utf8")
    return None


def _json_text(line: bytes) -> str | None:
  text = _utf8(line)
  if text is None:
    return None
  try:
    obj = json.loads(text)
  except ValueError:
    counters.increment("text_files/invalid_json")
    return None
  if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
    counters.increment("text_files/missing_text")
    return None
  return obj["text"]


def in_validation(text: str, fraction: float) -> bool:
  """Whether a document belongs to the hash-chosen validation share (stable across runs and file orders)."""
  return zlib.crc32(text.encode("utf-8", "surrogatepass")) % 1_000_000 < fraction * 1_000_000


def split_files(config: TextFilesConfig, split: str) -> list[str]:
  """The files a split reads (sorted); raises if the patterns match none."""
  _check_split(split)
  patterns = config.validation_pattern if config.validation_pattern and split == "validation" else config.pattern
  files = expand_patterns(patterns)
  if not files:
    raise ValueError(
      f"no files match {patterns!r} for the {split} split of the user's text "
      "(set $GLM_JAX_TEXT_FILES or the gin binding text_files_config.pattern to a glob of "
      ".txt / .jsonl files)"
    )
  return files


def text_file_documents(config: TextFilesConfig, split: str, files: Sequence[str]) -> Iterator[str]:
  """The documents of `split` in `files` (from `split_files`), file by file."""
  separate = bool(config.validation_pattern)
  for path in files:
    for text in read_documents(path):
      if separate or in_validation(text, config.validation_fraction) == (split == "validation"):
        yield text


class TextFilesSource(_DocumentSource):
  """seqio source over the user's .txt / .jsonl files; `config` is read when a dataset is made (so gin
  bindings and environment variables set after `import tasks` apply)."""

  def __init__(self, config: TextFilesConfig | Callable[[], TextFilesConfig]):
    super().__init__()
    self._config = config

  def _documents(self, split, shuffle, seed):
    config = self._config() if callable(self._config) else self._config
    files = split_files(config, split)
    if shuffle:
      np.random.default_rng(seed).shuffle(files)

    def file_documents(path: bytes) -> np.ndarray:
      texts = list(text_file_documents(config, split, [path.decode()]))
      return np.array([t.encode("utf-8", "surrogatepass") for t in texts], dtype=object).reshape(-1)

    # A file at a time through a pure numpy_function (not a Python generator), so the pipeline's position is
    # tf.data state that iterator checkpoints (exact resume) can save.
    documents = tf.data.Dataset.from_tensor_slices(files).map(
      lambda path: tf.ensure_shape(tf.numpy_function(file_documents, [path], tf.string, stateful=False), [None])
    )
    return documents.flat_map(tf.data.Dataset.from_tensor_slices).map(lambda text: {"text": text})


# (c) Any TFDS text dataset.


def tfds_source(name: str, *, splits: Sequence[str] = SPLITS, data_dir: str | None = None) -> seqio.TfdsDataSource:
  """A TFDS text dataset by name (e.g. "c4/en:3.0.1"); nothing is loaded or downloaded until it is read.

  Prepare the dataset beforehand with `tfds build` (or `tfds.builder(name).download_and_prepare()`) into
  `data_dir`; a Task over it starts with `rename_text` if its text feature is not called "text".
  """
  return seqio.TfdsDataSource(tfds_name=name, splits={s: s for s in splits}, tfds_data_dir=data_dir)


class CheckedTfdsSource(seqio.DataSource):
  """A TFDS dataset whose name (version included) and data_dir are read at its first use, from `config()` ->
  (name, data_dir or None), so gin bindings made after the Task's registration apply (`c4_config.version`).
  The first read checks that TFDS can load that version and that it is prepared, and otherwise fails with one
  line naming the versions this TFDS has and how to prepare one (a prepared directory of a version TFDS no
  longer builds, e.g. c4/en:3.0.1 as T5X and MaxText read it, still loads)."""

  def __init__(self, config: Callable[[], tuple[str, str | None]], splits: Sequence[str] = SPLITS):
    super().__init__(splits=splits)
    self._config = config
    self._source: seqio.TfdsDataSource | None = None
    self._resolved: tuple[str, str | None] | None = None

  def _checked(self) -> seqio.TfdsDataSource:
    resolved = self._config()  # each use: a binding changed since the last one applies
    if self._source is None or resolved != self._resolved:
      name, data_dir = resolved
      _check_tfds_dataset(name, data_dir)
      self._source = seqio.TfdsDataSource(tfds_name=name, splits={s: s for s in self.splits}, tfds_data_dir=data_dir)
      self._resolved = resolved
    return self._source

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return self._checked().list_shards(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None, shard_info=None, *, sequence_length=None,
                  use_cached=False, num_epochs=1):  # fmt: skip
    del sequence_length, use_cached
    return self._checked().get_dataset(split, shuffle=shuffle, seed=seed, shard_info=shard_info, num_epochs=num_epochs)


def _check_tfds_dataset(name: str, data_dir: str | None) -> None:
  """Raises ValueError (one line) unless TFDS loads the prepared dataset `name` ("c4/en:3.1.0") from data_dir."""
  import tempfile

  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  try:
    builder, problem = tfds.builder(name, data_dir=data_dir), None
  except Exception:  # noqa: BLE001  (TFDS raises AssertionError or its own errors for an unknown version)
    builder, problem = None, "TFDS cannot build that version and no prepared copy of it is there"
  if builder is not None and not builder.is_prepared():
    problem = "it is not prepared there"
  if problem is None:
    return
  base = name.split(":")[0]
  try:
    with tempfile.TemporaryDirectory() as empty:
      versions = [str(v) for v in tfds.builder(base, data_dir=empty).versions]
  except Exception:  # noqa: BLE001
    versions = []
  offered = f"TFDS {tfds.__version__} builds {base} at {', '.join(versions)}" if versions else f"TFDS has no {base}"
  newest = versions[0] if versions else "VERSION"
  raise ValueError(
    f"cannot read TFDS dataset {name!r} from {where}: {problem} ({offered}); prepare one with `tfds build "
    f"{base}:{newest} --data_dir={where}` (or copy a prepared directory there) and bind its version "
    f"(e.g. c4_config.version = '{newest}') and directory (c4_config.data_dir)"
  )


def rename_text(ds: tf.data.Dataset, text_key: str = "text") -> tf.data.Dataset:
  """Keeps only the text feature of each example, as {"text": ...}."""
  return ds.map(lambda ex: {"text": ex[text_key]}, num_parallel_calls=tf.data.AUTOTUNE)


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; the GLM sources have {SPLITS}")

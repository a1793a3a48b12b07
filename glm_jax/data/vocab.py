"""GLM vocabularies: SentencePiece with every GLM special token as one id, the default vocabulary, and the save
and load of every vocabulary family (this one and the THUDM tokenizers of glm_jax.data.tokenizers).

Every GLM vocabulary exposes `special_ids: Mapping[str, int]` with at least the DESIGN names `[pad]`, `[eos]`,
`[CLS]` (alias `[ENC]`), `[MASK]`, `[sMASK]`, `[gMASK]`, `[sop]`, `[eop]`, `[UNK]`, and `[dBLOCK]` where the
vocabulary has it (the default one does; it replaces Part B inputs, TokenObjective.block_mask_prob);
glm_jax.data.example's `special_id(vocab, name)` and `SpecialIds.from_vocabulary(vocab)` are the only ways code looks
one up.

The SentencePiece vocabularies trained here: pad=0 (`[pad]`), eos=1 (`[eos]`), unk=2 (`[UNK]`) as seqio
assumes, no BOS, the other specials as user-defined symbols (so "[MASK]" in text encodes to the mask id), and
byte fallback (any text round-trips). Training is reproducible: one thread, every input line used in order,
no sampling; the model file is cached under `cache_dir("vocab", <hash of corpus + settings>)`
(`python -m glm_jax.main vocab --corpus 'data/*.txt' --vocab_size 8000 --output my.model`).

Saving: `save(vocabulary, directory)` copies the vocabulary's files into `directory` (local or any epath, e.g.
gs://) with a manifest (`tokenizer.json`: family, files, options, fingerprint); `load(directory)` rebuilds it,
through a local copy for remote directories. `fingerprint(vocabulary)` identifies a vocabulary by its family,
options and file contents, wherever its files are. glm_jax.train.checkpoints keeps a checkpoint's vocabulary this
way, so the checkpoint carries its tokenizer.
Tokenizing in tf.data: `vocab.encode_tf(text)` (tensorflow_text SentencePiece ops, no Python per example).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import sentencepiece as spm
import seqio
from etils import epath

from glm_jax.data import cache_dir, facts, file_lock, tokenizers

PAD, EOS, UNK = "[pad]", "[eos]", "[UNK]"
USER_DEFINED_SPECIALS = ("[CLS]", "[MASK]", "[sMASK]", "[gMASK]", "[sop]", "[eop]", "[dBLOCK]")
SPECIAL_TOKENS = (PAD, EOS, UNK, *USER_DEFINED_SPECIALS)
# Vocabularies trained before [dBLOCK] joined the specials (2026-12) lack it and still load, without it.
OPTIONAL_SPECIALS = ("[dBLOCK]",)
ALIASES = {"[ENC]": "[CLS]"}
DEFAULT_VOCAB_SIZE = 4096  # the embedded corpus supports at most ~4.5k unigram pieces; trains in about a second


class GLMSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio SentencePieceVocabulary whose model carries the GLM special tokens (see `train_model`)."""

  def __init__(self, sentencepiece_model_file: str):
    super().__init__(sentencepiece_model_file, extra_ids=0)

  @property
  def saved_form(self) -> tuple[str, tuple[str, ...], dict]:
    """(family, files, options): `FAMILIES[family](*files, **options)` rebuilds this vocabulary."""
    return "sentencepiece", (self._sentencepiece_model_file,), {}

  @property
  def special_ids(self) -> dict[str, int]:
    """DESIGN name -> id; raises if the model file lacks one (it was not trained by this module)."""
    model = self.tokenizer
    ids = {}
    for name in SPECIAL_TOKENS:
      i = model.piece_to_id(name)
      if model.id_to_piece(i) != name:
        if name in OPTIONAL_SPECIALS:
          continue
        raise ValueError(
          f"{self._sentencepiece_model_file} has no piece {name!r}; train the vocabulary with "
          "python -m glm_jax.main vocab"
        )
      ids[name] = i
    ids.update({alias: ids[name] for alias, name in ALIASES.items()})
    return ids


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """SentencePiece settings; part of the cache key."""

  vocab_size: int = DEFAULT_VOCAB_SIZE
  model_type: str = "unigram"
  character_coverage: float = 1.0
  max_sentence_length: int = 16384  # bytes; longer lines are split before training, never skipped

  def trainer_kwargs(self) -> dict:
    return dict(
      vocab_size=self.vocab_size,
      model_type=self.model_type,
      character_coverage=self.character_coverage,
      max_sentence_length=self.max_sentence_length,
      pad_id=0,
      pad_piece=PAD,
      eos_id=1,
      eos_piece=EOS,
      unk_id=2,
      unk_piece=UNK,
      bos_id=-1,
      user_defined_symbols=list(USER_DEFINED_SPECIALS),
      byte_fallback=True,
      # Reproducibility: one thread, all lines in input order.
      num_threads=1,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      minloglevel=2,
    )


def _lines(documents: Iterable[str], max_bytes: int) -> list[str]:
  """Non-empty lines of the documents, each cut to at most `max_bytes` UTF-8 bytes."""
  lines = []
  for document in documents:
    for line in document.splitlines():
      data = line.strip().encode("utf-8")
      while data:
        # Cut on a character boundary so every piece decodes.
        cut = len(data) if len(data) <= max_bytes else max_bytes
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:
          cut -= 1
        lines.append(data[:cut].decode("utf-8"))
        data = data[cut:]
  return lines


def train_model(documents: Iterable[str], settings: TrainSettings = TrainSettings()) -> bytes:
  """Trains a SentencePiece model on `documents`; the same documents and settings give the same bytes."""
  lines = _lines(documents, settings.max_sentence_length)
  if not lines:
    raise ValueError("cannot train a vocabulary on an empty corpus (no non-empty lines)")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **settings.trainer_kwargs())
  return model.getvalue()


def cached_model_file(documents: Sequence[str], settings: TrainSettings = TrainSettings()) -> str:
  """Path of the model trained on `documents` with `settings`, trained on the first call and then cached."""
  key = hashlib.sha256()
  key.update(json.dumps(settings.trainer_kwargs(), sort_keys=True).encode())  # the special tokens included
  key.update(spm.__version__.encode())
  for document in documents:
    key.update(hashlib.sha256(document.encode("utf-8", "surrogatepass")).digest())
  directory = cache_dir("vocab", key.hexdigest()[:20])
  path = os.path.join(directory, "spm.model")
  with file_lock(os.path.join(directory, ".lock")):
    if not os.path.exists(path):
      data = train_model(documents, settings)
      with open(path + ".tmp", "wb") as f:
        f.write(data)
      os.replace(path + ".tmp", path)
  return path


def embedded_corpus_texts() -> list[str]:
  """The train documents of the embedded corpus (glm_jax.data.sources) the default vocabulary learns from."""
  from glm_jax.data import sources

  return [text for _, text in sources.embedded_documents("train")]


_DEFAULT: dict[str, GLMSentencePieceVocabulary] = {}


def default_vocabulary() -> GLMSentencePieceVocabulary:
  """The default GLM vocabulary: DEFAULT_VOCAB_SIZE unigram pieces trained offline on the embedded corpus.

  Trained on first use (about a second) and cached on disk; one instance per cache file in a process.
  """
  path = cached_model_file(embedded_corpus_texts())
  if path not in _DEFAULT:
    _DEFAULT[path] = GLMSentencePieceVocabulary(path)
  return _DEFAULT[path]


def facts_vocabulary() -> GLMSentencePieceVocabulary:
  """The vocabulary of the glm_*_facts Tasks: DEFAULT_VOCAB_SIZE BPE pieces trained on the embedded corpus and the
  facts corpus's train documents (glm_jax.data.facts), so every word of that small world is one piece. (The default
  unigram vocabulary, learnt from Python's documentation alone, spells "capital" in four pieces; a unigram one
  learnt with the facts still splits a third of their words, as its seed pieces come from distinct sentences.)
  Trained on first use (a second) and cached like `default_vocabulary`."""
  path = cached_model_file([*embedded_corpus_texts(), *facts.documents("train")], TrainSettings(model_type="bpe"))
  if path not in _DEFAULT:
    _DEFAULT[path] = GLMSentencePieceVocabulary(path)
  return _DEFAULT[path]


class LazyVocabulary(seqio.Vocabulary):
  """A vocabulary made on first use by `factory` (e.g. `default_vocabulary`), so that registering Tasks
  trains or reads nothing and the cache location ($GLM_JAX_CACHE) is read when data is first made.
  With cache=False the factory is asked at every use (it must then cache itself), so a factory that reads a
  setting (a gin binding) follows the setting's current value."""

  def __init__(self, factory: Callable[[], seqio.Vocabulary], cache: bool = True):
    super().__init__(extra_ids=0)
    self._factory = factory
    self._cache = cache
    self._vocabulary = None

  @property
  def vocabulary(self) -> seqio.Vocabulary:
    if not self._cache:
      return self._factory()
    if self._vocabulary is None:
      self._vocabulary = self._factory()
    return self._vocabulary

  @property
  def special_ids(self) -> Mapping[str, int]:
    return self.vocabulary.special_ids

  @property
  def eos_id(self) -> int | None:
    return self.vocabulary.eos_id

  @property
  def pad_id(self) -> int:
    return self.vocabulary.pad_id

  @property
  def unk_id(self) -> int | None:
    return self.vocabulary.unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self.vocabulary.vocab_size

  def _encode(self, s):
    return self.vocabulary.encode(s)

  def _decode(self, ids):
    return self.vocabulary.decode(ids)

  def _encode_tf(self, s):
    return self.vocabulary.encode_tf(s)

  def _decode_tf(self, ids):
    return self.vocabulary.decode_tf(ids)

  def __eq__(self, other) -> bool:
    if isinstance(other, LazyVocabulary):
      other = other.vocabulary
    return self.vocabulary == other

  def __hash__(self) -> int:
    return hash(self._factory)


def read_corpus(pattern: str) -> list[str]:
  """The documents of the corpus files matching `pattern` (see glm_jax.data.sources), or of the embedded
  corpus for `pattern == "embedded"`."""
  if pattern == "embedded":
    return embedded_corpus_texts()
  from glm_jax.data import sources

  files = sources.expand_patterns(pattern)
  if not files:
    raise ValueError(f"--corpus {pattern!r} matches no files (give a glob of .txt / .jsonl files, or 'embedded')")
  return [text for path in files for text in sources.read_documents(path)]


FAMILIES = {"sentencepiece": GLMSentencePieceVocabulary, **tokenizers.FAMILIES}
MANIFEST = "tokenizer.json"


def saved_form(vocabulary) -> tuple[str, tuple[str, ...], dict]:
  """(family, files, options) of a GLM vocabulary (a LazyVocabulary is resolved first)."""
  if isinstance(vocabulary, LazyVocabulary):
    vocabulary = vocabulary.vocabulary
  form = getattr(vocabulary, "saved_form", None)
  if form is None:
    raise TypeError(
      f"{type(vocabulary).__name__} cannot be saved with a checkpoint; GLM vocabularies are "
      f"{', '.join(sorted(FAMILIES))} (glm_jax.data.vocab, glm_jax.data.tokenizers)"
    )
  return form


def _digest(family: str, options: dict, contents: Sequence[bytes]) -> str:
  digest = hashlib.sha256(json.dumps([family, options], sort_keys=True).encode())
  for data in contents:
    digest.update(hashlib.sha256(data).digest())
  return digest.hexdigest()


def fingerprint(vocabulary) -> str:
  """A hash of the vocabulary's family, options and file contents: equal for the same tokenizer wherever its files
  live (a cached model file and its copy in a checkpoint)."""
  family, files, options = saved_form(vocabulary)
  return _digest(family, options, [epath.Path(f).read_bytes() for f in files])


def save(vocabulary, directory: str) -> None:
  """Writes the vocabulary's files and its manifest into `directory` (created if missing; local or gs://...)."""
  family, files, options = saved_form(vocabulary)
  target = epath.Path(directory)
  target.mkdir(parents=True, exist_ok=True)
  names = [os.path.basename(os.fspath(f)) for f in files]
  if len(set(names)) != len(names):
    raise ValueError(f"the files of the {family} vocabulary share a name: {list(files)}")
  contents = [epath.Path(f).read_bytes() for f in files]
  for name, data in zip(names, contents):
    (target / name).write_bytes(data)
  manifest = {"family": family, "files": names, "options": options, "fingerprint": _digest(family, options, contents)}
  (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # last: a folder with it is complete


def load(directory: str):
  """The vocabulary `save` wrote into `directory`, or None when there is none. Files in a remote directory are
  copied to a local cache first (the tokenizer libraries read local files)."""
  path = epath.Path(directory)
  if not (path / MANIFEST).exists():
    return None
  saved = json.loads((path / MANIFEST).read_text())
  family = saved["family"]
  if family not in FAMILIES:
    raise ValueError(f"{path / MANIFEST} names the vocabulary family {family!r}; expected one of {sorted(FAMILIES)}")
  # Manifests written by glm-jax before 0.1 hold `embedding_rows` and no options.
  options = saved.get("options", {"embedding_rows": saved["embedding_rows"]} if "embedding_rows" in saved else {})
  files = [path / name for name in saved["files"]]
  if "://" in os.fspath(directory):
    contents = [f.read_bytes() for f in files]
    local = cache_dir("checkpoint_vocab", _digest(family, options, contents)[:20])
    for name, data in zip(saved["files"], contents):
      with open(os.path.join(local, name), "wb") as out:
        out.write(data)
    files = [os.path.join(local, name) for name in saved["files"]]
  return FAMILIES[family](*map(os.fspath, files), **options)


def make(
  corpus: str | None = None,
  files: Sequence[str] | None = None,
  family: str | None = None,
  vocab_size: int = DEFAULT_VOCAB_SIZE,
  model_type: str = "unigram",
  embedding_rows: int | None = None,
):
  """The vocabulary of the `vocab` command: a GLM SentencePiece vocabulary trained on `corpus` (comma-separated
  globs of .txt/.jsonl files, or "embedded"; cached), or the `family` vocabulary of a tokenizer's `files`
  (`embedding_rows`: the model's, for a THUDM family)."""
  if (corpus is None) == (not files):
    raise ValueError("give --corpus (to train a SentencePiece vocabulary) or --files with --family, one of them")
  if corpus is not None:
    settings = TrainSettings(vocab_size=vocab_size, model_type=model_type)
    return GLMSentencePieceVocabulary(cached_model_file(read_corpus(corpus), settings))
  if family not in FAMILIES:
    raise ValueError(f"--files needs --family, one of {sorted(FAMILIES)}; got {family!r}")
  options = {"embedding_rows": embedding_rows} if embedding_rows and family in tokenizers.FAMILIES else {}
  return FAMILIES[family](*files, **options)


def write_model_file(vocabulary: GLMSentencePieceVocabulary, output: str) -> None:
  """Copies a SentencePiece vocabulary's model file to `output` (local or gs://)."""
  family, files, _ = saved_form(vocabulary)
  if family != "sentencepiece":
    raise ValueError(f"--output writes a SentencePiece model file; this vocabulary is {family}")
  epath.Path(output).write_bytes(epath.Path(files[0]).read_bytes())

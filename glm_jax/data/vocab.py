"""GLM vocabularies: SentencePiece with every GLM special token as one id, and the one special-id lookup.

Every GLM vocabulary exposes `special_ids: Mapping[str, int]` with at least the DESIGN names `[pad]`, `[eos]`,
`[CLS]` (alias `[ENC]`), `[MASK]`, `[sMASK]`, `[gMASK]`, `[sop]`, `[eop]`, `[UNK]`; `special_id(vocab, name)`
is the only way code looks one up (the THUDM tokenizers of glm_jax.convert.tokenizers expose the same).

The SentencePiece vocabularies trained here: pad=0 (`[pad]`), eos=1 (`[eos]`), unk=2 (`[UNK]`) as seqio
assumes, no BOS, the other specials as user-defined symbols (so "[MASK]" in text encodes to the mask id), and
byte fallback (any text round-trips). Training is reproducible: one thread, every input line used in order,
no sampling; the model file is cached under `cache_dir("vocab", <hash of corpus + settings>)`.

Command:
  python -m glm_jax.data.vocab --corpus 'data/*.txt' --vocab_size 8000 --output my.model
  python -m glm_jax.data.vocab --corpus embedded --vocab_size 4096 --output default.model
Tokenizing in tf.data: `vocab.encode_tf(text)` (tensorflow_text SentencePiece ops, no Python per example).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence

import sentencepiece as spm
import seqio

from glm_jax.data import cache_dir, file_lock

PAD, EOS, UNK = "[pad]", "[eos]", "[UNK]"
USER_DEFINED_SPECIALS = ("[CLS]", "[MASK]", "[sMASK]", "[gMASK]", "[sop]", "[eop]")
SPECIAL_TOKENS = (PAD, EOS, UNK, *USER_DEFINED_SPECIALS)
ALIASES = {"[ENC]": "[CLS]"}
DEFAULT_VOCAB_SIZE = 4096  # the embedded corpus supports at most ~4.5k unigram pieces; trains in about a second


def special_id(vocabulary, name: str) -> int:
  """The id of the GLM special token `name` (e.g. "[MASK]") in `vocabulary`."""
  ids = getattr(vocabulary, "special_ids", None)
  if ids is None:
    raise TypeError(
      f"{type(vocabulary).__name__} has no `special_ids`; GLM needs a vocabulary that names its "
      "special tokens (glm_jax.data.vocab.GLMSentencePieceVocabulary or "
      "glm_jax.convert.tokenizers.GLMVocabulary)"
    )
  if name not in ids:
    raise KeyError(f"special token {name!r} is not in {type(vocabulary).__name__}; it has {sorted(ids)}")
  return int(ids[name])


class GLMSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio SentencePieceVocabulary whose model carries the GLM special tokens (see `train_model`)."""

  def __init__(self, sentencepiece_model_file: str):
    super().__init__(sentencepiece_model_file, extra_ids=0)

  @property
  def special_ids(self) -> dict[str, int]:
    """DESIGN name -> id; raises if the model file lacks one (it was not trained by this module)."""
    model = self.tokenizer
    ids = {}
    for name in SPECIAL_TOKENS:
      i = model.piece_to_id(name)
      if model.id_to_piece(i) != name:
        raise ValueError(
          f"{self._sentencepiece_model_file} has no piece {name!r}; train the vocabulary with "
          "python -m glm_jax.data.vocab"
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
  key.update(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
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


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(
    prog="python -m glm_jax.data.vocab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--corpus", required=True, help="comma-separated globs of .txt/.jsonl files, or 'embedded'")
  parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE)
  parser.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
  parser.add_argument("--output", required=True, help="where to write the SentencePiece model file")
  args = parser.parse_args(argv)
  settings = TrainSettings(vocab_size=args.vocab_size, model_type=args.model_type)
  path = cached_model_file(read_corpus(args.corpus), settings)
  shutil.copyfile(path, args.output)
  vocab = GLMSentencePieceVocabulary(args.output)
  print(f"wrote {args.output}: {vocab.vocab_size} pieces; special ids {vocab.special_ids} (cached at {path})")
  return args.output


if __name__ == "__main__":
  main()

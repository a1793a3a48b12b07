"""The THUDM GLM tokenizers as seqio Vocabularies, with the reference's special-token ids.

Built from files the user supplies (`from_files` or one constructor per family):
    bert        BERT WordPiece uncased vocab.txt (GLM Base/Large/410M/515M), `tokenizers` library
    gpt2        GPT-2 byte-level BPE vocab.json + merges.txt (GLM 2B/10B), `tokenizers` library
    roberta     RoBERTa byte-level BPE vocab.json + merges.txt (GLM-RoBERTa), `tokenizers` library
    chinese_sp  cog-pretrain.model SentencePiece (GLM Large/10B Chinese), `sentencepiece` as the reference does

As the reference Tokenizer does, text is first split on the command-token strings (`[MASK]`, `[gMASK]`,
`<|startofpiece|>`, ...), which map to their ids; the pieces between go through the text tokenizer. Each
vocabulary exposes `special_ids`: the DESIGN names ("[pad]", "[eos]", "[CLS]", "[MASK]", "[sMASK]", "[gMASK]",
"[sop]", "[eop]", "[UNK]", alias "[ENC]", plus "[SEP]" and "[dBLOCK]" where the reference has them) -> id;
`glm_jax.data.example.special_id(vocab, name)` reads it; glm_jax.data.vocab saves and loads these vocabularies.

Speed: `encode_tf` / `decode_tf` call the Python tokenizer through `tf.numpy_function` (one call per example,
under the GIL, not serializable into a SavedModel and host-only). That is fine for fine-tuning-size data; for
pretraining-scale pipelines pre-tokenize, or use a native TF vocabulary.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.model import PRESETS, PUBLISHED


@dataclasses.dataclass(frozen=True)
class CommandToken:
  """A GLM command token: its DESIGN name, the string that stands for it in text, its id."""

  name: str
  text: str
  id: int
  lstrip: bool = False  # the reference strips whitespace before it (GPT-2 / RoBERTa masks)


class GLMVocabulary(seqio.Vocabulary):
  """A text tokenizer plus GLM command tokens. ids [0, base_vocab_size) are real; the model's embedding table
  has `embedding_rows` (the reference's padded size) rows."""

  def __init__(self, text_tokenizer, commands: Sequence[CommandToken], *, embedding_rows: int, name: str):
    """`text_tokenizer` has `encode(str) -> list[int]` and `decode(list[int]) -> str`."""
    super().__init__(extra_ids=0)
    self._text = text_tokenizer
    self._commands = tuple(commands)
    self._by_id = {}
    for c in self._commands:  # several names may share an id (pad = eos); the first is the one decoded
      self._by_id.setdefault(c.id, c)
    self._by_text = {c.text: c for c in reversed(self._commands)}
    self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self._by_text, key=len, reverse=True)) + ")")
    self.name = name
    self.embedding_rows = embedding_rows
    if self._base_vocab_size > embedding_rows:
      raise ValueError(f"{name}: {self._base_vocab_size} token ids do not fit {embedding_rows} embedding rows")

  @property
  def special_ids(self) -> dict[str, int]:
    """DESIGN name -> id of every command token, plus the alias "[ENC]" of "[CLS]" (as glm_jax.data.vocab)."""
    ids = {c.name: c.id for c in self._commands}
    ids["[ENC]"] = ids["[CLS]"]
    return ids

  @property
  def eos_id(self) -> int:
    return self.special_ids["[eos]"]

  @property
  def pad_id(self) -> int:
    return self.special_ids["[pad]"]

  @property
  def unk_id(self) -> int:
    return self.special_ids["[UNK]"]

  @property
  def _base_vocab_size(self) -> int:
    return max(self._text_size, max(self._by_id) + 1)

  @property
  def _text_size(self) -> int:
    return self._text.vocab_size

  def _encode(self, s: str) -> list[int]:
    ids: list[int] = []
    parts = self._split.split(s)
    for i, part in enumerate(parts):
      if i % 2:  # a command-token string
        ids.append(self._by_text[part].id)
        continue
      if i + 1 < len(parts) and self._by_text[parts[i + 1]].lstrip:
        part = part.rstrip()
      if part:
        ids.extend(self._text.encode(part))
    return ids

  def _decode(self, ids: Iterable[int]) -> str:
    """Text runs decoded by the text tokenizer, command tokens as their strings (padding and EOS dropped),
    joined by spaces as the reference's DecodeIds does."""
    pieces, run = [], []
    for i in (int(x) for x in ids):
      if i not in self._by_id and i < self._text_size:
        run.append(i)
        continue
      if run:
        pieces.append(self._text.decode(run))
        run = []
      if i not in (self.pad_id, self.eos_id):  # ids past the text vocabulary that name no command are [UNK]
        pieces.append(self._by_id.get(i, self._by_id[self.unk_id]).text)
    if run:
      pieces.append(self._text.decode(run))
    return " ".join(p for p in pieces if p)

  def _encode_tf(self, s):
    """Scalar string -> int32 [L]; strings [N] -> ragged int32 [N, None]; a ragged tensor of strings -> the same
    with one more ragged dimension (as tensorflow_text's tokenizers do); through tf.numpy_function (see the module
    docstring for the cost)."""
    if isinstance(s, tf.RaggedTensor):
      return s.with_flat_values(self._encode_tf(s.flat_values))
    s = tf.convert_to_tensor(s)
    if s.shape.rank == 0:

      def encode(x):
        return np.asarray(self._encode(np.asarray(x).item().decode("utf-8")), np.int32)

      out = tf.numpy_function(encode, [s], tf.int32, stateful=False)
      out.set_shape([None])
      return out
    if s.shape.rank != 1:
      raise ValueError(f"encode_tf takes a scalar, a vector or a ragged tensor of strings; got shape {s.shape}")

    def encode_many(texts):
      ids = [self._encode(x.decode("utf-8")) for x in texts]
      flat = np.asarray([i for row in ids for i in row], np.int32)
      return flat, np.asarray([len(row) for row in ids], np.int64)

    flat, lengths = tf.numpy_function(encode_many, [s], [tf.int32, tf.int64], stateful=False)
    flat.set_shape([None])
    lengths.set_shape([None])
    return tf.RaggedTensor.from_row_lengths(flat, lengths, validate=False)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int [L] -> scalar string, or [B, L] -> [B] strings."""

    def decode(x):
      if x.ndim == 1:
        return np.asarray(self._decode(x.tolist()).encode("utf-8"), object)
      return np.asarray([self._decode(row.tolist()).encode("utf-8") for row in x], object)

    out = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  @property
  def saved_form(self) -> tuple[str, tuple[str, ...], dict]:
    """(family, files, options): `FAMILIES[family](*files, **options)` rebuilds this vocabulary."""
    return self.name, tuple(self._text.source), {"embedding_rows": self.embedding_rows}

  def __eq__(self, other):
    return (
      isinstance(other, GLMVocabulary)
      and self.name == other.name
      and self._commands == other._commands
      and self._text.source == other._text.source
    )

  def __hash__(self):
    return hash((self.name, self._commands))


def _import_tokenizers():
  try:
    import tokenizers
  except ImportError as err:
    raise ImportError(
      'the BERT / GPT-2 / RoBERTa vocabularies need tokenizers: pip install "glm-jax[convert]"'
    ) from err
  return tokenizers


class _HFText:
  """A `tokenizers` Tokenizer as a text tokenizer (no special tokens added on encode)."""

  def __init__(self, tokenizer, source: tuple[str, ...]):
    self._tok = tokenizer
    self.source = source
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=False)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: list[int]) -> str:
    return self._tok.decode(ids, skip_special_tokens=False)

  def token_to_id(self, token: str) -> int:
    i = self._tok.token_to_id(token)
    if i is None:
      raise ValueError(f"{token!r} is not in the vocabulary {self.source}; is this the right tokenizer file?")
    return i


class _SentencePieceText:
  """sentencepiece's processor as a text tokenizer (the reference ChineseSPTokenizer encodes with it)."""

  def __init__(self, model_file: str):
    import sentencepiece as spm

    self._sp = spm.SentencePieceProcessor(model_file=model_file)
    self.source = (model_file,)
    self.vocab_size = self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: list[int]) -> str:
    return self._sp.decode(ids)


def _block_commands(first_id: int, *, task_mask_order=("[gMASK]", "[sMASK]"), gap: int = 0, lstrip=False):
  """[sop], [eop], then the task masks, numbered from `first_id` as the reference's add_block_symbols does."""
  sop = first_id + gap
  commands = [CommandToken("[sop]", "<|startofpiece|>", sop), CommandToken("[eop]", "<|endofpiece|>", sop + 1)]
  texts = {"[gMASK]": "[gMASK]", "[sMASK]": "[sMASK]"}
  commands += [CommandToken(n, texts[n], sop + 2 + k, lstrip) for k, n in enumerate(task_mask_order)]
  return commands


def bert_wordpiece(vocab_file: str, *, embedding_rows: int = 30592) -> GLMVocabulary:
  """BERT WordPiece uncased (GLM Base/Large/410M/515M): [PAD] = [eos] = 0, [CLS] 101, [MASK] 103, [sop] and
  [eop] then [gMASK], [sMASK], [dBLOCK] appended after the 30522 BERT tokens (30522..30526)."""
  BertWordPieceTokenizer = _import_tokenizers().BertWordPieceTokenizer

  text = _HFText(BertWordPieceTokenizer(vocab_file, lowercase=True), (vocab_file,))
  n = text.vocab_size
  commands = [
    CommandToken("[pad]", "[PAD]", text.token_to_id("[PAD]")),
    CommandToken("[eos]", "[PAD]", text.token_to_id("[PAD]")),
    CommandToken("[CLS]", "[CLS]", text.token_to_id("[CLS]")),
    CommandToken("[MASK]", "[MASK]", text.token_to_id("[MASK]")),
    CommandToken("[UNK]", "[UNK]", text.token_to_id("[UNK]")),
    CommandToken("[SEP]", "[SEP]", text.token_to_id("[SEP]")),
    *_block_commands(n),
    CommandToken("[dBLOCK]", "[dBLOCK]", n + 4),
  ]
  return GLMVocabulary(text, commands, embedding_rows=embedding_rows, name="bert")


def gpt2_bpe(vocab_json: str, merges_txt: str, *, embedding_rows: int = 50304) -> GLMVocabulary:
  """GPT-2 byte-level BPE (GLM 2B/10B): <|endoftext|> 50256 = [pad] = [eos]; then [sop] 50257, [eop] 50258,
  [CLS] 50259, [MASK] 50260, [SEP] 50261, [UNK] 50262, [gMASK] 50263, [sMASK] 50264, [dBLOCK] 50265."""
  ByteLevelBPETokenizer = _import_tokenizers().ByteLevelBPETokenizer

  text = _HFText(ByteLevelBPETokenizer(vocab_json, merges_txt), (vocab_json, merges_txt))
  n, eot = text.vocab_size, text.token_to_id("<|endoftext|>")
  commands = [
    CommandToken("[pad]", "<|endoftext|>", eot),
    CommandToken("[eos]", "<|endoftext|>", eot),
    CommandToken("[sop]", "<|startofpiece|>", n),
    CommandToken("[eop]", "<|endofpiece|>", n + 1),
    CommandToken("[CLS]", "[CLS]", n + 2),
    CommandToken("[MASK]", "[MASK]", n + 3, lstrip=True),
    CommandToken("[SEP]", "[SEP]", n + 4),
    CommandToken("[UNK]", "[UNK]", n + 5),
    CommandToken("[gMASK]", "[gMASK]", n + 6, lstrip=True),
    CommandToken("[sMASK]", "[sMASK]", n + 7, lstrip=True),
    CommandToken("[dBLOCK]", "[dBLOCK]", n + 8),
  ]
  return GLMVocabulary(text, commands, embedding_rows=embedding_rows, name="gpt2")


def roberta_bpe(vocab_json: str, merges_txt: str, *, embedding_rows: int = 50304) -> GLMVocabulary:
  """RoBERTa byte-level BPE (GLM-RoBERTa): <s> = [CLS] 0, </s> = [pad] = [eos] = [SEP] 2, <unk> 3,
  <mask> = [MASK] 50264; then [sop] 50265, [eop] 50266, [gMASK] 50267, [sMASK] 50268."""
  ByteLevelBPETokenizer = _import_tokenizers().ByteLevelBPETokenizer

  text = _HFText(ByteLevelBPETokenizer(vocab_json, merges_txt), (vocab_json, merges_txt))
  eos = text.token_to_id("</s>")
  commands = [
    CommandToken("[pad]", "<|endoftext|>", eos),
    CommandToken("[eos]", "<|endoftext|>", eos),
    CommandToken("[SEP]", "[SEP]", eos),
    CommandToken("[CLS]", "[CLS]", text.token_to_id("<s>")),
    CommandToken("[MASK]", "[MASK]", text.token_to_id("<mask>"), lstrip=True),
    CommandToken("[UNK]", "[UNK]", text.token_to_id("<unk>")),
    *_block_commands(text.vocab_size, lstrip=True),
  ]
  return GLMVocabulary(text, commands, embedding_rows=embedding_rows, name="roberta")


def chinese_sentencepiece(model_file: str, *, embedding_rows: int = 50048) -> GLMVocabulary:
  """cog-pretrain.model (GLM Large/10B Chinese), n = 50000 pieces: [pad] = [eos] n, [SEP] n+1, [CLS] n+2,
  [MASK] n+3, [UNK] n+4, [sop] n+6, [eop] n+7, [sMASK] n+8, [gMASK] n+9, [dBLOCK] n+10 (the reference's fixed
  command tokens, [dBLOCK] as its recipes with --block-mask-prob add it; glm-10b-chinese was trained with [gMASK] at
  n+7, which import fixes by copying that row)."""
  text = _SentencePieceText(model_file)
  n = text.vocab_size
  commands = [
    CommandToken("[pad]", "<|endoftext|>", n),
    CommandToken("[eos]", "<|endoftext|>", n),
    CommandToken("[SEP]", "[SEP]", n + 1),
    CommandToken("[CLS]", "[CLS]", n + 2),
    CommandToken("[MASK]", "[MASK]", n + 3, lstrip=True),
    CommandToken("[UNK]", "[UNK]", n + 4),
    *_block_commands(n + 5, task_mask_order=("[sMASK]", "[gMASK]"), gap=1, lstrip=True),
    CommandToken("[dBLOCK]", "[dBLOCK]", n + 10),
  ]
  return GLMVocabulary(text, commands, embedding_rows=embedding_rows, name="chinese_sp")


FAMILIES = {"bert": bert_wordpiece, "gpt2": gpt2_bpe, "roberta": roberta_bpe, "chinese_sp": chinese_sentencepiece}


def from_files(family: str, *files: str, **kwargs) -> GLMVocabulary:
  """`family` as in glm_jax.model.PUBLISHED (bert, gpt2, roberta, chinese_sp), with that family's files."""
  if family not in FAMILIES:
    raise ValueError(f"unknown tokenizer family {family!r}; expected one of {sorted(FAMILIES)}")
  return FAMILIES[family](*files, **kwargs)


def for_published(name: str, *files: str) -> GLMVocabulary:
  """The vocabulary of a published checkpoint (e.g. `for_published("glm-10b", "vocab.json", "merges.txt")`)."""
  if name not in PUBLISHED:
    raise ValueError(f"unknown published GLM checkpoint {name!r}; expected one of {sorted(PUBLISHED)}")
  return FAMILIES[PUBLISHED[name]](*files, embedding_rows=PRESETS[name].padded_vocab_size)

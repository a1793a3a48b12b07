"""GLM tokenizers as seqio vocabularies: the reference's special ids, text ids against independent tokenizers,
command-token splitting, decode, and the TF paths inside a seqio pipeline."""

from __future__ import annotations

import json
import pathlib

import pytest
import seqio
import tensorflow as tf

pytest.importorskip("tokenizers")

from glm_jax.data import tokenizers as glm_tokenizers  # noqa: E402

VOCAB_DIR = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "vocab"
BERT_VOCAB = VOCAB_DIR / "bert-base-uncased-vocab.txt"
GPT2_FILES = (VOCAB_DIR / "gpt2-vocab.json", VOCAB_DIR / "gpt2-merges.txt")
needs_real_vocab = pytest.mark.skipif(
  not (BERT_VOCAB.exists() and GPT2_FILES[0].exists()),
  reason=f"real BERT / GPT-2 vocabulary files not found under {VOCAB_DIR}",
)

TEXTS = ["Hello, World! The quick brown fox.", "naïve café — 3.14 unaffable", "  spaces   and\ttabs\n"]


@pytest.fixture(scope="module")
def bert():
  return glm_tokenizers.bert_wordpiece(str(BERT_VOCAB))


@pytest.fixture(scope="module")
def gpt2():
  return glm_tokenizers.gpt2_bpe(*map(str, GPT2_FILES))


@needs_real_vocab
def test_bert_special_ids_are_the_reference_ones(bert):
  assert bert.special_ids == {
    "[pad]": 0,
    "[eos]": 0,
    "[CLS]": 101,
    "[ENC]": 101,
    "[MASK]": 103,
    "[UNK]": 100,
    "[SEP]": 102,
    "[sop]": 30522,
    "[eop]": 30523,
    "[gMASK]": 30524,
    "[sMASK]": 30525,
    "[dBLOCK]": 30526,
  }
  assert (bert.pad_id, bert.eos_id, bert.unk_id) == (0, 0, 100)
  assert bert.vocab_size == 30527 and bert.embedding_rows == 30592


@needs_real_vocab
def test_bert_text_ids_match_tensorflow_text(bert):
  import tensorflow_text as tf_text

  oracle = tf_text.BertTokenizer(str(BERT_VOCAB), lower_case=True, token_out_type=tf.int64)
  for text in TEXTS:
    expected = oracle.tokenize([text]).merge_dims(1, 2).to_list()[0]
    assert bert.encode(text) == expected, text


@needs_real_vocab
def test_bert_command_tokens_in_text(bert):
  ids = bert.encode("Hello [MASK] world [gMASK]<|startofpiece|>")
  assert ids == [7592, 103, 2088, 30524, 30522]
  assert bert.decode(ids) == "hello [MASK] world [gMASK] <|startofpiece|>"


@needs_real_vocab
def test_gpt2_special_ids_are_the_reference_ones(gpt2):
  assert gpt2.special_ids == {
    "[pad]": 50256,
    "[eos]": 50256,
    "[sop]": 50257,
    "[eop]": 50258,
    "[CLS]": 50259,
    "[ENC]": 50259,
    "[MASK]": 50260,
    "[SEP]": 50261,
    "[UNK]": 50262,
    "[gMASK]": 50263,
    "[sMASK]": 50264,
    "[dBLOCK]": 50265,
  }
  assert gpt2.vocab_size == 50266 and gpt2.embedding_rows == 50304


@needs_real_vocab
def test_gpt2_text_ids_and_masks(gpt2):
  assert gpt2.encode("Hello world") == [15496, 995]  # the published GPT-2 ids
  # Masks strip the whitespace before them, as the reference's lstrip command tokens do.
  assert gpt2.encode("Hello [gMASK] world") == [15496, 50263, 995]
  for text in TEXTS:
    assert gpt2.decode(gpt2.encode(text)) == text
  assert gpt2.decode([15496, 50256, 995]) == "Hello"  # decoding stops at [eos]


@needs_real_vocab
def test_encode_tf_and_decode_tf_in_a_seqio_pipeline(bert, gpt2):
  for vocab in (bert, gpt2):
    ds = tf.data.Dataset.from_tensor_slices({"text": TEXTS + ["a [MASK] b"]})
    ds = seqio.preprocessors.tokenize(ds, output_features={"text": seqio.Feature(vocab)}, copy_pretokenized=False)
    got = [ex["text"].tolist() for ex in ds.as_numpy_iterator()]
    assert got == [vocab.encode(t) for t in TEXTS + ["a [MASK] b"]]
    padded = tf.ragged.constant(got).to_tensor(default_value=vocab.pad_id)
    decoded = [s.decode() for s in vocab.decode_tf(padded).numpy()]
    assert decoded == [vocab.decode(ids) for ids in got]
    assert vocab.decode_tf(tf.constant(got[0])).numpy().decode() == vocab.decode(got[0])


def _tiny_roberta_files(tmp_path):
  from tokenizers import pre_tokenizers

  specials = ["<s>", "<pad>", "</s>", "<unk>"]
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {t: i for i, t in enumerate(specials + alphabet + ["<mask>"])}
  (tmp_path / "vocab.json").write_text(json.dumps(vocab))
  (tmp_path / "merges.txt").write_text("#version: 0.2\n")
  return str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), len(vocab)


def test_roberta_special_ids_follow_the_vocabulary(tmp_path):
  vocab_json, merges, n = _tiny_roberta_files(tmp_path)  # n = 50265 for the real roberta vocab.json
  vocab = glm_tokenizers.roberta_bpe(vocab_json, merges)
  assert vocab.special_ids == {
    "[pad]": 2,
    "[eos]": 2,
    "[SEP]": 2,
    "[CLS]": 0,
    "[ENC]": 0,
    "[MASK]": n - 1,
    "[UNK]": 3,
    "[sop]": n,
    "[eop]": n + 1,
    "[gMASK]": n + 2,
    "[sMASK]": n + 3,
  }
  ids = vocab.encode("ab [MASK]<|endofpiece|>")
  assert ids == [vocab.encode("a")[0], vocab.encode("b")[0], n - 1, n + 1]  # no merges: one id per byte
  assert vocab.decode(ids) == "ab [MASK] <|endofpiece|>"


@pytest.fixture(scope="module")
def tiny_sentencepiece(tmp_path_factory):
  import sentencepiece as spm

  directory = tmp_path_factory.mktemp("sp")
  corpus = directory / "corpus.txt"
  corpus.write_text("\n".join(["今天天气很好", "我们去公园散步", "hello world", "天气预报说明天下雨"] * 20))
  spm.SentencePieceTrainer.train(
    input=str(corpus),
    model_prefix=str(directory / "m"),
    vocab_size=30,
    model_type="unigram",
    character_coverage=1.0,
    minloglevel=2,
  )
  return str(directory / "m.model")


def test_chinese_sentencepiece_special_ids_and_text(tiny_sentencepiece):
  import sentencepiece as spm

  vocab = glm_tokenizers.chinese_sentencepiece(tiny_sentencepiece)
  n = 30  # 50000 for cog-pretrain.model
  assert vocab.special_ids == {
    "[pad]": n,
    "[eos]": n,
    "[SEP]": n + 1,
    "[CLS]": n + 2,
    "[ENC]": n + 2,
    "[MASK]": n + 3,
    "[UNK]": n + 4,
    "[sop]": n + 6,
    "[eop]": n + 7,
    "[sMASK]": n + 8,
    "[gMASK]": n + 9,
    "[dBLOCK]": n + 10,
  }
  sp = spm.SentencePieceProcessor(model_file=tiny_sentencepiece)
  ids = vocab.encode("今天天气 [gMASK]公园")
  assert ids == sp.encode("今天天气") + [n + 9] + sp.encode("公园")
  assert vocab.decode(ids) == "今天天气 [gMASK] 公园"
  assert vocab.decode(sp.encode("天气") + [n + 5]) == "天气 [UNK]"  # the unused id n+5 decodes as [UNK]


def test_for_published_picks_the_family_and_rows(tiny_sentencepiece):
  vocab = glm_tokenizers.for_published("glm-large-chinese", tiny_sentencepiece)
  assert vocab.name == "chinese_sp" and vocab.embedding_rows == 50048
  with pytest.raises(ValueError, match="glm-large"):
    glm_tokenizers.for_published("glm-xl", tiny_sentencepiece)


@needs_real_vocab
def test_data_special_id_reads_these_vocabularies(bert, gpt2, tiny_sentencepiece):
  from glm_jax.data import example

  chinese = glm_tokenizers.chinese_sentencepiece(tiny_sentencepiece)
  for vocab in (bert, gpt2, chinese):
    for name in ("[pad]", "[eos]", "[CLS]", "[MASK]", "[sMASK]", "[gMASK]", "[sop]", "[eop]", "[UNK]"):
      assert example.special_id(vocab, name) == vocab.special_ids[name]
  assert example.special_id(gpt2, "[gMASK]") == 50263 and example.special_id(bert, "[MASK]") == 103


def test_encode_tf_takes_scalars_vectors_and_ragged_strings(tiny_sentencepiece):
  """The batched preprocessors tokenize a vector of documents (and, with SentenceObjective(split='text'), a ragged
  tensor of their sentences) in one call."""
  import tensorflow as tf

  vocab = glm_tokenizers.chinese_sentencepiece(tiny_sentencepiece)
  texts = ["今天天气 [gMASK]公园", "", "天气"]
  assert vocab.encode_tf(tf.constant(texts[0])).numpy().tolist() == vocab.encode(texts[0])
  assert vocab.encode_tf(tf.constant(texts)).to_list() == [vocab.encode(t) for t in texts]
  ragged = tf.ragged.constant([["今天", "天气"], [], ["公园"]])
  assert vocab.encode_tf(ragged).to_list() == [[vocab.encode(t.decode()) for t in row] for row in ragged.to_list()]

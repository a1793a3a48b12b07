"""Zero-shot language-modelling Tasks in the THUDM reference's formulation (glm_jax.data.language_model), which
`eval --lm` scores (glm_jax/eval/language_model.py): LAMBADA accuracy and WikiText-103 perplexity.

Tasks (the pretraining Tasks' features and vocabulary; a converted checkpoint's model.gin gives its tokenizer):
  glm_lambada      split 'test': the reference's lambada_test.jsonl (language_model_config.lambada_file or
                   $GLM_JAX_LAMBADA_FILE; one {"text": passage} a line: OpenAI's detokenized LAMBADA test set, the
                   reference's data), else TFDS `lambada` (its original, tokenized text: 'test', and its
                   development set as 'validation'); accuracy of the last word.
  glm_wikitext103  splits 'validation' / 'test': wiki.valid.tokens / wiki.test.tokens of WikiText-103 in
                   language_model_config.wikitext_dir (or $GLM_JAX_WIKITEXT_DIR; TFDS has no WikiText), the whole
                   file one document, detokenized as the reference does; perplexity over overlapping windows.
`register_perplexity_task(name, files)` adds one over text files of your own ({split: path}; one document a line, or
the whole file one with `one_document`).

Gin: language_model_config.mask: the blank; default the model's, as the reference picks it ([gMASK] with the task
  mask, GLMConfig.task_mask, else [MASK]; eval --lm passes the model's). .unidirectional: the reference's
  --unidirectional variant (the context read left to right, module docstring of glm_jax.data.language_model).
  .seq_length: --seq-length (default the reference's: 512 for LAMBADA, 1024 for WikiText); .overlap:
  --overlapping-eval (256). Rows have at most seq_length (LAMBADA) or seq_length + 1 (windows) tokens: the row
  length (TrainConfig.length) must hold them.
Counted: `language_model/<name>/examples`, `context_cut` (LAMBADA tokens cut to fit), `skipped` (empty or one-word
passages, malformed lines).
"""

from __future__ import annotations

import functools
import json
import logging
import os

import gin
import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data import counters, language_model as lm
from glm_jax.data.example import DTYPES, FEATURES, SpecialIds
from tasks import pretrain

log = logging.getLogger(__name__)

SEQ_LENGTH = {"lambada": 512, "perplexity": 1024}  # config_tasks/zero_lambada.sh, zero_wikitext.sh
WIKITEXT_FILES = {"validation": "wiki.valid.tokens", "test": "wiki.test.tokens"}


@gin.configurable
def language_model_config(
  lambada_file: str | None = None,
  wikitext_dir: str | None = None,
  mask: str | None = None,
  unidirectional: bool = False,
  seq_length: int | None = None,
  overlap: int = 256,
) -> dict:
  """Where the data is and how the rows are made (see the module docstring)."""
  if mask is not None and mask not in ("[MASK]", "[gMASK]", "[sMASK]"):
    raise ValueError(f"language_model_config.mask={mask!r}: expected [MASK], [gMASK] or [sMASK]")
  return {
    "lambada_file": lambada_file or os.environ.get("GLM_JAX_LAMBADA_FILE") or None,
    "wikitext_dir": wikitext_dir or os.environ.get("GLM_JAX_WIKITEXT_DIR") or None,
    "mask": mask,
    "unidirectional": unidirectional,
    "seq_length": seq_length,
    "overlap": overlap,
  }


def mask() -> str:
  value = language_model_config()["mask"] or lm.current_model_mask()
  if value is None:
    raise ValueError(
      "bind language_model_config.mask: '[gMASK]' for a model trained with the task mask (GLM-2B/10B, the Chinese "
      "models, glm-jax's own), '[MASK]' otherwise (eval --lm picks the model's)"
    )
  return value


def _lambada_texts(split: str) -> list[str]:
  path = language_model_config()["lambada_file"]
  if path is not None:
    if split != "test":
      raise ValueError(f"the reference's LAMBADA file is the test split; got split {split!r}")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: language_model_config.lambada_file is lambada_test.jsonl")
    texts = []
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        try:
          texts.append(json.loads(line)["text"])
        except (ValueError, KeyError, TypeError):
          counters.increment("language_model/glm_lambada/skipped")
          if line.strip():
            log.warning("%s:%d: not a JSON object with a 'text': skipped", path, number)
    return texts
  import tensorflow_datasets as tfds

  tfds_split = {"test": "test", "validation": "train"}.get(split)  # TFDS's 'train' is LAMBADA's development set
  if tfds_split is None:
    raise ValueError(f"glm_lambada has splits test and validation; got {split!r}")
  try:
    rows = tfds.as_numpy(tfds.load("lambada", split=tfds_split, download=False))
  except Exception as e:  # TFDS raises several types for a dataset that is not prepared
    raise FileNotFoundError(
      f"lambada is not prepared in TFDS ({type(e).__name__}); bind language_model_config.lambada_file (or set "
      f"$GLM_JAX_LAMBADA_FILE) to the reference's lambada_test.jsonl, or run `tfds build lambada`"
    ) from None
  return [row["passage"].decode().strip() for row in rows]


def _wikitext_path(split: str) -> str:
  directory = language_model_config()["wikitext_dir"]
  if directory is None:
    raise FileNotFoundError(
      "glm_wikitext103 reads WikiText-103's wiki.{valid,test}.tokens: bind language_model_config.wikitext_dir (or set "
      "$GLM_JAX_WIKITEXT_DIR) to the directory holding them (TFDS has no WikiText)"
    )
  if split not in WIKITEXT_FILES:
    raise ValueError(f"glm_wikitext103 has splits {sorted(WIKITEXT_FILES)}; got {split!r}")
  return os.path.join(directory, WIKITEXT_FILES[split])


def _read(path: str) -> str:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist")
  with open(path, "rb") as f:
    return f.read().decode("utf-8")


def _documents(paths, one_document: bool, split: str) -> list[str]:
  """The raw (not yet detokenized) documents of a split."""
  text = _read(paths(split))
  if one_document:
    return [text]
  return [line.strip() for line in text.splitlines() if line.strip()]


def _original_words(paths, one_document: bool, split: str) -> tuple[int, int]:
  documents = _documents(paths, one_document, split)
  return sum(lm.original_words(d) for d in documents), len(documents)


def _out_types():
  return [tf.as_dtype(DTYPES.get(f, np.int32)) for f in FEATURES]


def _check_fits(name: str, rows: int, sequence_length) -> None:
  if not sequence_length or "input_ids" not in sequence_length:
    raise ValueError(
      "the LM Tasks need a sequence length: pass task_feature_lengths="
      "glm_jax.data.feature_converter.task_feature_lengths(L) to seqio.get_dataset"
    )
  if rows > int(sequence_length["input_ids"]):
    raise ValueError(
      f"{name}: rows of up to {rows} tokens (language_model_config.seq_length) do not fit in "
      f"{sequence_length['input_ids']}: raise TrainConfig.length, or lower language_model_config.seq_length"
    )


def lambada_preprocessor(dataset, sequence_length, output_features, *, name: str):
  """A passage -> its LAMBADA row (glm_jax.data.language_model.lambada_row); passages without a context skipped."""
  config = language_model_config()
  seq_length = config["seq_length"] or SEQ_LENGTH["lambada"]
  _check_fits(name, seq_length, sequence_length)
  vocabulary = output_features["input_ids"].vocabulary
  ids, blank, out_types = SpecialIds.from_vocabulary(vocabulary), mask(), _out_types()

  def make(serialized):
    text = serialized.decode()
    context, answer = lm.lambada_tokens(text, vocabulary.encode) if text.split() else ([], [])
    if not context or not answer:
      counters.increment(f"language_model/{name}/skipped")
      return tuple(np.zeros([0], t.as_numpy_dtype) for t in out_types)
    row, cut = lm.lambada_row(context, answer, ids, mask=blank, max_length=seq_length,
                              unidirectional=config["unidirectional"])  # fmt: skip
    counters.increment(f"language_model/{name}/examples")
    counters.increment(f"language_model/{name}/context_cut", cut)
    return tuple(row[f].astype(t.as_numpy_dtype) for f, t in zip(FEATURES, out_types))

  def to_row(ex):
    features = tf.numpy_function(make, [ex["example"]], out_types, stateful=False)
    for values in features:
      values.set_shape([None])
    return dict(zip(FEATURES, features))

  return dataset.map(to_row).filter(lambda row: tf.size(row["input_ids"]) > 0)


def windows_preprocessor(dataset, sequence_length, output_features, *, name: str, detokenize):
  """A document -> the rows of its windows (glm_jax.data.language_model.windows)."""
  config = language_model_config()
  seq_length, overlap = config["seq_length"] or SEQ_LENGTH["perplexity"], config["overlap"]
  _check_fits(name, seq_length + 1, sequence_length)
  lm.windows(2, seq_length, overlap, config["unidirectional"])  # bad settings fail here, with their names
  vocabulary = output_features["input_ids"].vocabulary
  ids, blank, out_types = SpecialIds.from_vocabulary(vocabulary), mask(), _out_types()

  def make(serialized):
    text = serialized.decode()
    tokens = list(vocabulary.encode(detokenize(text) if detokenize else text))
    rows = [lm.window_row(tokens, w, ids, mask=blank, unidirectional=config["unidirectional"])
            for w in lm.windows(len(tokens), seq_length, overlap, config["unidirectional"])]  # fmt: skip
    if not rows:
      counters.increment(f"language_model/{name}/skipped")
    counters.increment(f"language_model/{name}/examples", len(rows))
    width = max([r["input_ids"].size for r in rows], default=0)
    lengths = np.asarray([r["input_ids"].size for r in rows], np.int32)
    stacked = [np.zeros([len(rows), width], t.as_numpy_dtype) for t in out_types]
    for i, r in enumerate(rows):
      for array, f in zip(stacked, FEATURES):
        array[i, : lengths[i]] = r[f]
    return (lengths, *stacked)

  def to_rows(ex):
    lengths, *features = tf.numpy_function(make, [ex["example"]], [tf.int32, *out_types], stateful=False)
    lengths.set_shape([None])
    for values in features:
      values.set_shape([None, None])
    return tf.data.Dataset.from_tensor_slices((lengths, tuple(features)))

  def trim(length, features):
    return {f: values[:length] for f, values in zip(FEATURES, features)}

  return dataset.flat_map(to_rows).map(trim)


def _register(name: str, kind: str, load, splits, preprocessor, original_words=None) -> str:
  seqio.TaskRegistry.add(
    name,
    source=pretrain.SerializedSource(load, splits),
    output_features=pretrain.output_features(),
    preprocessors=[functools.partial(preprocessor, name=name)],
  )
  lm.REGISTERED[name] = lm.RegisteredTask(kind, original_words)
  return name


def register_perplexity_task(
  name: str, files: dict[str, str] | None = None, *, one_document: bool = False, detokenize=None, paths=None
) -> str:
  """Registers a perplexity Task `name` over text files: `files` {split: path} (or `paths`, a function split ->
  path read when a dataset is made); one document a line, or each file one document (`one_document`), detokenized
  with `detokenize` (a str -> str function) before tokenizing. Returns the name."""
  if (files is None) == (paths is None):
    raise ValueError("give files ({split: path}) or paths (split -> path)")
  splits = tuple(files) if files is not None else tuple(WIKITEXT_FILES)
  where = paths or (lambda split: files[split])
  load = functools.partial(_documents, where, one_document)
  preprocessor = functools.partial(windows_preprocessor, detokenize=detokenize)
  return _register(name, "perplexity", load, splits, preprocessor,
                   functools.partial(_original_words, where, one_document))  # fmt: skip


LAMBADA = _register("glm_lambada", "lambada", _lambada_texts, ("test", "validation"), lambada_preprocessor)
WIKITEXT103 = register_perplexity_task(
  "glm_wikitext103", paths=_wikitext_path, one_document=True, detokenize=lm.wikitext_detokenize
)

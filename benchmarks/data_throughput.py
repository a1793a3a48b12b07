"""GLM data pipeline throughput, tokens per second per CPU core, at L = 512.

    taskset -c 0 python benchmarks/data_throughput.py --max_length 512 --corpus_mb 8

Two measurements, each on one core (the process pins itself to --core; TensorFlow runs one intra-op, one
inter-op and one tf.data thread):
  (a) tokenization: the default vocabulary's `encode_tf` mapped over a tf.data dataset of documents, as seqio's
      tokenize preprocessor does;
  (b) corruption + feature conversion: glm_jax.data.blank_infilling on every document, then the packed
      GLMFeatureConverter over the resulting examples (held in memory as ragged tensors);
  (c) with --end_to_end, the whole seqio pipeline: `seqio.get_dataset` of the Tasks `glm_{objective}_text`
      over the same documents (written to a temporary .jsonl), i.e. (a) + the Tasks' preprocessors (which call
      (b)'s corruption through tf.numpy_function) + the packed converter; document tokens are recovered
      from the packed rows (real tokens - [CLS] per segment - 2 per span).
Rates are document tokens divided by the CPU seconds the process used (`time.process_time`, all threads), so
other load on the machine does not count against them; wall-clock rates are printed beside them.
The baseline is the PyTorch GLM data pipeline's ~350k tokens/s per core for corruption and batching.

The corpus is English prose: the .txt/.md/.rst documentation files installed with Python and its packages
(one file = one document), or the files under --corpus. Part (b) takes its token ids from the default
vocabulary when it loads, else from a word-level id table (corruption does not depend on the ids).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import time

import numpy as np

BASELINE_TOKENS_PER_S = 350_000
SENTENCE_END = re.compile(r"[.!?。！？]$")


def pin_to_one_core(core: int) -> None:
  """One core for this process and one thread per TensorFlow pool; call before TensorFlow is imported."""
  os.sched_setaffinity(0, {core})
  for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ[name] = "1"
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def load_corpus(corpus: str | None, megabytes: float) -> list[str]:
  """Documents of real text, up to `megabytes` in all, in a fixed order."""
  if corpus:
    root = pathlib.Path(corpus)
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
  else:
    roots = sorted({pathlib.Path(sys.prefix), pathlib.Path(sys.base_prefix)})
    paths = sorted(
      p
      for r in roots
      for ext in ("txt", "md", "rst")
      for p in r.rglob(f"*.{ext}")
      if p.is_file() and p.stat().st_size >= 1024
    )
  documents, size = [], 0
  for path in paths:
    try:
      text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
      continue
    documents.append(text)
    size += len(text)
    if size >= megabytes * 2**20:
      break
  if not documents:
    raise ValueError(f"no readable text documents found under {corpus or sys.prefix}; pass --corpus DIR")
  return documents


def default_vocabulary():
  """The default GLM vocabulary (glm_jax.data.vocab), or None when it cannot be loaded here."""
  try:
    from glm_jax.data import vocab

    return vocab.default_vocabulary()
  except Exception as e:
    print(f"default vocabulary unavailable ({type(e).__name__}: {e}); part (a) skipped, (b) uses word ids")
    return None


def tokenization_throughput(documents: list[str], vocabulary) -> dict[str, float]:
  """Part (a): the vocabulary's encode_tf over a tf.data dataset of documents."""
  import tensorflow as tf

  ds = tf.data.Dataset.from_tensor_slices(documents).with_options(_one_thread_options())
  ds = ds.map(vocabulary.encode_tf).map(tf.size)
  cpu, wall = time.process_time(), time.perf_counter()
  tokens = int(ds.reduce(np.int64(0), lambda total, n: total + tf.cast(n, tf.int64)))
  return _rates(tokens, cpu, wall)


def token_ids(documents: list[str], vocabulary) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Token ids and sentence lengths of each document (sentences end at . ! ? and line breaks)."""
  ids, sentences = [], []
  table: dict[str, int] = {}
  for text in documents:
    lines = [line for line in text.split("\n") if line.strip()]
    pieces = [s for line in lines for s in re.split(r"(?<=[.!?])\s+", line) if s.strip()]
    if vocabulary is not None:
      encoded = [np.asarray(vocabulary.encode(s), np.int32) for s in pieces]
    else:
      encoded = [np.array([table.setdefault(w, 100 + len(table)) for w in s.split()], np.int32) for s in pieces]
    ids.append(np.concatenate(encoded) if encoded else np.zeros(0, np.int32))
    sentences.append(np.array([e.size for e in encoded], np.int64))
  return ids, sentences


def corruption_and_conversion(ids, sentences, objective: str, max_length: int) -> dict[str, float]:
  """Part (b): blank infilling of every document, then the packed feature converter."""
  import tensorflow as tf

  from glm_jax.data import blank_infilling as bi, example, feature_converter as fc

  special = example.SpecialIds(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7)
  rng = np.random.default_rng(0)
  cpu, wall = time.process_time(), time.perf_counter()
  examples = []
  for doc, lengths in zip(ids, sentences):
    if objective == "tokens":
      examples += bi.corrupt_tokens(doc, rng, max_length=max_length, special=special)
    elif objective == "sentences":
      examples += bi.corrupt_sentences(doc, lengths, rng, max_length=max_length, special=special)
    else:
      examples += bi.corrupt_document(doc, rng, max_length=max_length, special=special)
  corrupt_cpu, corrupt_wall = time.process_time() - cpu, time.perf_counter() - wall

  ds = tf.data.Dataset.from_tensor_slices(
    {
      name: tf.RaggedTensor.from_row_lengths(
        np.concatenate([ex[name] for ex in examples]), [ex[name].size for ex in examples]
      )
      for name in example.FEATURES
    }
  )
  ds = fc.GLMFeatureConverter(pack=True)(ds.with_options(_one_thread_options()), fc.task_feature_lengths(max_length))
  ds = ds.map(lambda row: tf.math.count_nonzero(row["segment_ids"]))
  cpu, wall = time.process_time(), time.perf_counter()
  rows, real = (int(x) for x in ds.reduce((np.int64(0), np.int64(0)), lambda acc, n: (acc[0] + 1, acc[1] + n)))
  convert_cpu, convert_wall = time.process_time() - cpu, time.perf_counter() - wall

  tokens = int(sum(doc.size for doc in ids))
  return {
    "tokens": tokens,
    "examples": len(examples),
    "rows": rows,
    "fill": real / (rows * max_length),
    "corrupt": tokens / corrupt_cpu,
    "convert": tokens / convert_cpu,
    "both": tokens / (corrupt_cpu + convert_cpu),
    "both_wall": tokens / (corrupt_wall + convert_wall),
  }


def reference_style_token_corruption(ids, max_length: int) -> dict[str, float]:
  """The in-process baseline: token-level corruption the way the PyTorch GLM code builds it (Python lists and
  per-span loops over numpy slices: Poisson span lengths drawn with random.choices, placed with randrange,
  Part A / Part B assembled span by span, then padded to L as its collate function does). Same documents,
  same L, same core as (b); documents are cut into pieces of 0.8 L so A + B fits."""
  import math
  import random

  rng = random.Random(0)
  weights = [math.exp(-3.0) * 3.0**k / math.factorial(k) for k in range(1, 40)]
  mask_id, sop_id, eop_id, pad_id = 3, 6, 7, 0
  piece = int(0.8 * max_length)
  cpu, wall = time.process_time(), time.perf_counter()
  rows = 0
  for doc in ids:
    for begin in range(0, doc.size, piece):
      tokens = doc[begin : begin + piece]
      n = tokens.size
      if n < 2:
        continue
      lengths, masked = [], 0
      while masked < 0.15 * n:
        length = rng.choices(range(1, 40), weights=weights)[0]
        if masked + length + len(lengths) + 1 > n:
          break
        lengths.append(length)
        masked += length
      if not lengths:
        continue
      rng.shuffle(lengths)
      free = n - masked - len(lengths) + 1
      places = sorted(rng.randrange(free + 1) for _ in lengths)
      spans, offset = [], 0
      for place, length in zip(places, lengths):
        spans.append((offset + place, offset + place + length))
        offset += length + 1
      position_ids = np.arange(n)
      target_tokens, target_positions, target_blocks, targets = [], [], [], []
      for start, end in sorted(spans, key=lambda _: rng.random()):
        target_tokens += [[sop_id], list(tokens[start:end])]
        targets += [list(tokens[start:end]), [eop_id]]
        target_positions.append([int(position_ids[start])] * (end - start + 1))
        target_blocks.append(list(range(1, end - start + 2)))
      source_tokens, source_positions, last, current = [], [], 0, 0
      for start, end in spans:
        source_tokens += [list(tokens[last:start]), [mask_id]]
        source_positions.append(list(range(current, current + start - last + 1)))
        current += start - last + 1
        last = end
      source_tokens.append(list(tokens[last:]))
      source = [t for part in source_tokens for t in part]
      sep = len(source)
      row = source + [t for part in target_tokens for t in part]
      labels = [0] * sep + [t for part in targets for t in part]
      loss_mask = [0] * sep + [1] * (len(row) - sep)
      pad = max_length - len(row)
      np.array(row + [pad_id] * pad), np.array(labels + [pad_id] * pad), np.array(loss_mask + [0] * pad)
      rows += 1
  tokens = int(sum(doc.size for doc in ids))
  return {
    "tokens": tokens,
    "rows": rows,
    "cpu": tokens / (time.process_time() - cpu),
    "wall": tokens / (time.perf_counter() - wall),
  }


def end_to_end(documents: list[str], objective: str, max_length: int) -> dict[str, float]:
  """Part (c): seqio.get_dataset of the text Task of `objective` over `documents`, packed."""
  import json
  import tempfile

  import seqio
  import tensorflow as tf

  from glm_jax.data import feature_converter as fc

  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in documents), encoding="utf-8")
    os.environ["GLM_JAX_TEXT_FILES"] = str(path)
    import tasks  # noqa: F401  (registers the Tasks)

    ds = seqio.get_dataset(
      f"glm_{objective}_text",
      task_feature_lengths=fc.task_feature_lengths(max_length),
      feature_converter=fc.GLMFeatureConverter(pack=True),
      shuffle=False,
      seed=0,
    )

    def document_tokens(row):
      real = tf.math.count_nonzero(row["segment_ids"])
      spans = tf.math.count_nonzero(row["block_position_ids"] == 1)
      return real - tf.cast(tf.reduce_max(row["segment_ids"]), tf.int64) - 2 * spans

    ds = ds.with_options(_one_thread_options()).map(document_tokens)
    cpu, wall = time.process_time(), time.perf_counter()
    tokens = int(ds.reduce(np.int64(0), lambda total, n: total + n))
    return _rates(tokens, cpu, wall)


def _one_thread_options():
  import tensorflow as tf

  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  return options


def _rates(tokens: int, cpu: float, wall: float) -> dict[str, float]:
  return {"tokens": tokens, "cpu": tokens / (time.process_time() - cpu), "wall": tokens / (time.perf_counter() - wall)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--max_length", type=int, default=512)
  parser.add_argument(
    "--corpus", default=None, help="a text file or a directory of them (default: docs installed with Python)"
  )
  parser.add_argument("--corpus_mb", type=float, default=8.0)
  parser.add_argument("--core", type=int, default=0)
  parser.add_argument("--objectives", default="tokens,sentences,document")
  parser.add_argument("--end_to_end", action="store_true", help="also time (c), the seqio Tasks end to end")
  parser.add_argument("--repeat", type=int, default=3, help="runs of each (c) measurement; the median is reported")
  args = parser.parse_args()
  pin_to_one_core(args.core)
  import tensorflow as tf

  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)

  documents = load_corpus(args.corpus, args.corpus_mb)
  vocabulary = default_vocabulary()
  ids, sentences = token_ids(documents, vocabulary)
  print(
    f"corpus: {len(documents)} documents, {sum(map(len, documents)) / 2**20:.1f} MiB of text, "
    f"{sum(d.size for d in ids):,} tokens ({'default vocabulary' if vocabulary else 'word ids'}); "
    f"L={args.max_length}; pinned to core {args.core}\n"
  )

  print(
    "| part | objective | tokens/s per core (CPU time) | wall tokens/s | vs 350k/s PyTorch | "
    "corruption | conversion | examples | rows | row fill |"
  )
  print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  baseline = reference_style_token_corruption(ids, args.max_length)
  print(
    f"| baseline: PyTorch-GLM-style corruption (same process) | tokens | {baseline['cpu']:,.0f} | "
    f"{baseline['wall']:,.0f} | {baseline['cpu'] / BASELINE_TOKENS_PER_S:.2f}x | | | | {baseline['rows']:,} | |",
    flush=True,
  )
  if vocabulary is not None:
    a = tokenization_throughput(documents, vocabulary)
    print(
      f"| (a) tokenization | all | {a['cpu']:,.0f} | {a['wall']:,.0f} | "
      f"{a['cpu'] / BASELINE_TOKENS_PER_S:.2f}x | | | | | |"
    )
  for objective in args.objectives.split(","):
    b = corruption_and_conversion(ids, sentences, objective, args.max_length)
    print(
      f"| (b) corruption + conversion | {objective} | {b['both']:,.0f} | {b['both_wall']:,.0f} | "
      f"{b['both'] / BASELINE_TOKENS_PER_S:.2f}x | {b['corrupt']:,.0f} | {b['convert']:,.0f} | "
      f"{b['examples']:,} | {b['rows']:,} | {b['fill']:.3f} |",
      flush=True,
    )
    if objective == "tokens":
      print(
        f"  token-level corruption + conversion vs the same-process baseline: {b['both'] / baseline['cpu']:.2f}x",
        flush=True,
      )
  if args.end_to_end:
    task_objectives = {"tokens": "token", "sentences": "sentence", "document": "document"}
    for objective in args.objectives.split(","):
      runs = [end_to_end(documents, task_objectives[objective], args.max_length) for _ in range(args.repeat)]
      c = sorted(runs, key=lambda r: r["cpu"])[len(runs) // 2]  # the median run
      each = ", ".join(f"{r['cpu']:,.0f}" for r in runs)
      spread = f" (runs: {each})" if len(runs) > 1 else ""
      print(
        f"| (c) seqio Task end to end, median of {len(runs)} | {objective} | {c['cpu']:,.0f}{spread} | "
        f"{c['wall']:,.0f} | {c['cpu'] / BASELINE_TOKENS_PER_S:.2f}x | | | | | |",
        flush=True,
      )


if __name__ == "__main__":
  main()

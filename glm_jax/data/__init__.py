"""GLM data: the example layout, vocabularies, sources, blank-infilling corruption, seqio preprocessors, the
feature converter.

Modules:
  example           the GLM example layout (Part A / Part B, 2D positions, sep) and `SpecialIds`, the one record
                    of the special token ids (also `glm_jax.data.SpecialIds`).
  vocab             SentencePiece vocabulary with every GLM special token; `default_vocabulary()` (trained offline
                    on the embedded corpus, cached), `facts_vocabulary()` (the facts Tasks'); save / load /
                    fingerprint of every vocabulary family.
  tokenizers        the THUDM tokenizers (BERT WordPiece, GPT-2 and RoBERTa BPE, Chinese SentencePiece).
  sources           the embedded corpus (Python's own documentation as a TFDS dataset), user .txt/.jsonl
                    files, any TFDS text dataset, the facts corpus; every source yields {"text": tf.string}.
  facts             one-sentence facts of a small world, the quickstart's corpus, and the quiz that grades fills.
  blank_infilling   the numpy corruption core (token / sentence / document objectives).
  preprocessors     seqio preprocessors that run the core inside tf.data, one seed per document.
  feature_converter GLMFeatureConverter: task features -> fixed-length model features (packed or padded).
  cloze             classification as cloze filling (patterns and verbalizers).
  synthetic         a learnable synthetic task for tests and smoke runs.
  counters          what the pipeline skipped or produced, for logs.
  inspect           decoded examples of a Task (`python -m glm_jax.main inspect`).
Tasks and mixtures are registered by `import tasks` (tasks/pretrain.py).

Counters API (glm_jax.data.counters), for the training loop and tools:
  counters.snapshot(prefix="") -> {name: count}   e.g. {"text_files/invalid_json": 3, "token/documents": 120}
  counters.format_counts(counts) -> str            one "name=value" line each
  counters.reset()
Malformed input (invalid JSON or UTF-8, a missing "text" field, empty documents, unreadable files) is skipped
and counted, never raised; the names are listed in glm_jax/data/counters.py.

Cache: trained vocabularies and the built embedded TFDS dataset live under `cache_dir()`:
$GLM_JAX_CACHE, or ~/.cache/glm_jax.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from glm_jax.data.example import SpecialIds  # noqa: F401


def cache_dir(*parts: str) -> str:
  """`$GLM_JAX_CACHE/<parts>` (default ~/.cache/glm_jax), created if missing; read at call time."""
  root = os.environ.get("GLM_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "glm_jax")
  path = os.path.join(root, *parts)
  os.makedirs(path, exist_ok=True)
  return path


@contextlib.contextmanager
def file_lock(path: str):
  """Holds an exclusive lock on `path` (created if missing): processes that build the same cache entry wait
  for the first one instead of writing it twice."""
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)

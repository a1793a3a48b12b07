"""GLM data pipeline: vocabulary, sources, blank-infilling corruption, seqio preprocessors, feature converter.

Modules:
  vocab             SentencePiece vocabulary with every GLM special token; `special_id(vocab, name)`;
                    `default_vocabulary()` (trained offline on the embedded corpus, cached).
  sources           the embedded corpus (Python's own documentation as a TFDS dataset), user .txt/.jsonl
                    files, any TFDS text dataset; every source yields {"text": tf.string}.
  blank_infilling   the numpy corruption core (token / sentence / document objectives).
  preprocessors     seqio preprocessors that run the core inside tf.data, one seed per document.
  feature_converter GLMFeatureConverter: task features -> fixed-length model features (packed or padded).
  counters          what the pipeline skipped or produced, for logs.
  inspect           `python -m glm_jax.data.inspect`: print decoded examples, save converted features.
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

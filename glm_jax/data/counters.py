"""Process-wide counters of what the data pipeline skipped or produced, so nothing is dropped silently.

Sources and preprocessors call `increment("<source or stage>/<what>")` from the Python code that runs inside
tf.data (generators, `tf.numpy_function`); the training loop and the inspect command read `snapshot()`.
Counts cover the elements tf.data has processed so far, prefetched ones included; they are per process.

Names in use:
  text_files/documents, text_files/empty_documents, text_files/invalid_utf8, text_files/invalid_json,
  text_files/missing_text, text_files/unreadable_files     (glm_jax.data.sources, user .txt/.jsonl files)
  {objective}/documents, {objective}/empty_documents, {objective}/invalid_utf8, {objective}/examples,
  {objective}/long_documents (documents longer than 100 x max_length tokens, cut into pieces, none dropped)
  cloze/examples, cloze/truncated (texts whose start was cut to fit the row)   (glm_jax.data.cloze)
  superglue/<task>/malformed (lines skipped: bad JSON, a missing field or label) (glm_jax.data.superglue_sources)
                                                           (glm_jax.data.preprocessors; objective is
                                                            token, sentence or document)
"""

from __future__ import annotations

import collections
import threading

_lock = threading.Lock()
_counts: collections.Counter[str] = collections.Counter()


def increment(name: str, amount: int = 1) -> None:
  """Adds `amount` to the counter `name` (thread-safe; tf.data runs map functions on several threads)."""
  if amount:
    with _lock:
      _counts[name] += int(amount)


def snapshot(prefix: str = "") -> dict[str, int]:
  """A copy of the counters whose name starts with `prefix`, sorted by name."""
  with _lock:
    return {k: v for k, v in sorted(_counts.items()) if k.startswith(prefix)}


def reset() -> None:
  """Sets every counter back to zero (tests, or a fresh count per evaluation)."""
  with _lock:
    _counts.clear()


def format_counts(counts: dict[str, int]) -> str:
  """One `name=value` line per counter, for logs."""
  return "\n".join(f"{k}={v}" for k, v in counts.items()) or "(no data-pipeline counts)"


SKIPPED = (  # inputs not used
  "empty_documents",
  "invalid_utf8",
  "invalid_json",
  "missing_text",
  "unreadable_files",
  "malformed",
)
TRUNCATED = ("truncated",)  # inputs used in part


def summary(counts: dict[str, int]) -> str:
  """One line of what the pipeline made and skipped, e.g. `data: 1,204 examples; skipped 3 inputs
  (text_files/invalid_json=3)`: what `train` logs at each evaluation and at the end."""
  examples = sum(v for k, v in counts.items() if k.endswith("/examples"))
  line = f"data: {examples:,} examples"
  for what, suffixes in (("skipped", SKIPPED), ("truncated", TRUNCATED)):
    found = {k: v for k, v in counts.items() if k.rsplit("/", 1)[-1] in suffixes and v}
    details = f" ({', '.join(f'{k}={v:,}' for k, v in found.items())})" if found else ""
    if found or what == "skipped":
      line += f"; {what} {sum(found.values()):,} inputs{details}"
  return line

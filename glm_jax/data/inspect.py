"""Decoded GLM examples of a registered Task or Mixture, and their model features (the `inspect` command).

  python -m glm_jax.main inspect --mixture glm_embedded --num_examples 4 --length 128 \
      [--gin_file gin/data/glm10b.gin] [--gin.TokenObjective.mask_ratio=0.3] [--out ex.npz] [--pack]

Each example prints Part A (its mask tokens visible) and each Part B span with the position of its mask in A.
`out` saves the converted features (the model features of docs/design.md, one array [N, L] each; with `pack`,
N packed rows). Ends with the pipeline's skip counters.
"""

from __future__ import annotations

import numpy as np
import seqio

from glm_jax.data import counters, example as example_lib, feature_converter
from glm_jax.data.example import SpecialIds


def describe(example: dict[str, np.ndarray], vocabulary) -> str:
  """Part A and the B spans of one task-feature example, decoded."""
  part_a, spans = example_lib.split(example)
  ids = SpecialIds.from_vocabulary(vocabulary)
  names = {ids.mask: "[MASK]", ids.smask: "[sMASK]", ids.gmask: "[gMASK]"}
  lines = [
    f"  length {example['input_ids'].size}, Part A ({part_a.size} tokens): {vocabulary.decode(part_a.tolist())!r}"
  ]
  for position, tokens in spans:
    mask = names.get(int(part_a[position]), "?")
    lines.append(f"  span at A[{position}] {mask} ({tokens.size} tokens): {vocabulary.decode(tokens.tolist())!r}")
  return "\n".join(lines)


def inspect_task(
  name: str,
  *,
  num_examples: int = 4,
  length: int = 128,
  split: str = "validation",
  seed: int = 0,
  out: str | None = None,
  pack: bool = False,
) -> dict[str, np.ndarray]:
  """Prints `num_examples` examples of the Task or Mixture `name` and the pipeline's counters; with `out`, saves
  the converted model features there (.npz) and returns them (else {})."""
  provider = seqio.get_mixture_or_task(name)
  lengths = feature_converter.task_feature_lengths(length)
  ds = provider.get_dataset(lengths, split=split, shuffle=False, seed=seed)
  vocabulary = provider.output_features["input_ids"].vocabulary
  for i, example in enumerate(ds.take(num_examples).as_numpy_iterator()):
    print(f"example {i}:")
    print(describe(example, vocabulary))
  features = {}
  if out:
    converter = feature_converter.GLMFeatureConverter(pack=pack)
    rows = list(converter(ds, lengths).take(num_examples).as_numpy_iterator())
    features = {name: np.stack([row[name] for row in rows]) for name in converter.MODEL_FEATURES}
    np.savez(out, **features)
    print(f"saved {len(rows)} rows of {sorted(features)} [N, L] = {features['input_ids'].shape} to {out}")
  print("counters:")
  print(counters.format_counts(counters.snapshot()))
  return features

"""Prints GLM examples of a registered Task or Mixture, decoded, and saves their model features.

  python -m glm_jax.data.inspect --mixture glm_embedded --num_examples 4 --length 128 \
      [--gin_file gin/data/glm10b.gin] [--gin.TokenObjective.mask_ratio=0.3] [--out ex.npz] [--pack]

Each example prints Part A (its mask tokens visible) and each Part B span with the position of its mask in A.
`--out` saves the converted features (the model features of docs/design.md, one array [N, L] each; with
`--pack`, N packed rows). Ends with the pipeline's skip counters. Tasks are registered by `import tasks`
before the gin files are parsed, so their configurables (TokenObjective, glm_mixture_rates, ...) bind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import seqio

import gin
from glm_jax.data import blank_infilling, counters, feature_converter


def _split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """`--gin.NAME=VALUE` -> gin binding `NAME=VALUE`; the other arguments are left for argparse."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      binding = arg[len("--gin.") :]
      if "=" not in binding:
        raise SystemExit(f"{arg}: expected --gin.NAME=VALUE")
      bindings.append(binding)
    else:
      rest.append(arg)
  return bindings, rest


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m glm_jax.data.inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--mixture", required=True, help="a registered seqio Mixture or Task, e.g. glm_embedded")
  parser.add_argument("--num_examples", type=int, default=4)
  parser.add_argument("--length", type=int, default=128, help="the sequence length L")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--gin_file", action="append", default=[], help="gin file(s), parsed in order")
  parser.add_argument("--out", help="save the converted model features [N, L] to this .npz file")
  parser.add_argument("--pack", action="store_true", help="pack several examples per row in --out")
  return parser


def describe(example: dict[str, np.ndarray], vocabulary) -> str:
  """Part A and the B spans of one task-feature example, decoded."""
  part_a, spans = blank_infilling.split_example(example)
  special = blank_infilling.SpecialIds.from_vocabulary(vocabulary)
  lines = [
    f"  length {example['input_ids'].size}, Part A ({part_a.size} tokens): {vocabulary.decode(part_a.tolist())!r}"
  ]
  for position, tokens in spans:
    mask = {special.mask: "[MASK]", special.smask: "[sMASK]", special.gmask: "[gMASK]"}.get(int(part_a[position]), "?")
    lines.append(f"  span at A[{position}] {mask} ({tokens.size} tokens): {vocabulary.decode(tokens.tolist())!r}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Runs the command; returns the converted features (empty if no --out)."""
  import tasks  # noqa: F401

  bindings, rest = _split_gin_args(sys.argv[1:] if argv is None else argv)
  args = _parser().parse_args(rest)
  try:
    gin.parse_config_files_and_bindings(args.gin_file, bindings)
  except ValueError as e:  # unknown configurable or parameter: gin's message names it
    raise SystemExit(f"gin: {e}") from e

  provider = seqio.get_mixture_or_task(args.mixture)
  lengths = feature_converter.task_feature_lengths(args.length)
  ds = provider.get_dataset(lengths, split=args.split, shuffle=False, seed=args.seed)
  vocabulary = provider.output_features["input_ids"].vocabulary
  for i, example in enumerate(ds.take(args.num_examples).as_numpy_iterator()):
    print(f"example {i}:")
    print(describe(example, vocabulary))

  features = {}
  if args.out:
    converter = feature_converter.GLMFeatureConverter(pack=args.pack)
    rows = list(converter(ds, lengths).take(args.num_examples).as_numpy_iterator())
    features = {name: np.stack([row[name] for row in rows]) for name in converter.MODEL_FEATURES}
    np.savez(args.out, **features)
    print(f"saved {len(rows)} rows of {sorted(features)} [N, L] = {features['input_ids'].shape} to {args.out}")
  print("counters:")
  print(counters.format_counts(counters.snapshot()))
  return features


if __name__ == "__main__":
  main()

"""`python -m glm_jax.convert --from_pytorch PATH --output_dir DIR`: import a THUDM GLM checkpoint."""

from __future__ import annotations

import argparse
import logging
import sys

from glm_jax.convert.checkpoint import convert_checkpoint


def main(argv: list[str] | None = None, prog: str = "python -m glm_jax.convert") -> int:
  parser = argparse.ArgumentParser(prog=prog, description=__doc__)
  parser.add_argument(
    "--from_pytorch",
    required=True,
    help="HF folder (config.json + pytorch_model.bin), Megatron/DeepSpeed checkpoint folder, or a single .bin/.pt file",
  )
  parser.add_argument("--output_dir", required=True, help="empty directory for the orbax checkpoint")
  parser.add_argument(
    "--num_heads",
    type=int,
    default=None,
    help="attention heads, when there is no config.json and the shape is not a published one",
  )
  parser.add_argument(
    "--allow_pickle",
    action="store_true",
    help="load .pt files holding Python objects besides tensors (only for trusted files)",
  )
  parser.add_argument("--no_scan_layers", action="store_true", help="write per-layer params (layers_0, ...)")
  parser.add_argument(
    "--vocab_files",
    nargs="*",
    default=(),
    help="tokenizer files to check and keep with the checkpoint: vocab.txt (BERT), vocab.json "
    "merges.txt (GPT-2 / RoBERTa) or cog-pretrain.model (Chinese)",
  )
  parser.add_argument(
    "--tokenizer",
    choices=("bert", "gpt2", "roberta", "chinese_sp"),
    default=None,
    help="family of --vocab_files (default: that of the published model of this shape)",
  )
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  convert_checkpoint(
    args.from_pytorch,
    args.output_dir,
    num_heads=args.num_heads,
    allow_pickle=args.allow_pickle,
    scan_layers=not args.no_scan_layers,
    vocab_files=args.vocab_files,
    tokenizer=args.tokenizer,
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())

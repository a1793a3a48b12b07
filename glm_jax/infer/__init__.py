"""Inference on the model and the data layout only: batched, cached blank infilling (decode.py, the generation entry
point), the text conventions of the `infer` command (infilling.py), candidate scoring over the same cache
(scoring.py), and the full-recompute greedy oracle (recompute.py)."""

from glm_jax.infer.decode import DecodeOptions, Generation, generate  # noqa: F401

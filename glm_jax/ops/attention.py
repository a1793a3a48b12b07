"""The one public entry point for GLM attention; it dispatches to one file per backend.

    reference   attention_reference.py   materialized mask, O(L^2) memory: the oracle
    xla         attention_xla.py         blockwise online softmax + recomputing custom_vjp, O(L) memory
    pallas_gpu  attention_pallas_gpu.py  fused-mask flash kernel (Triton lowering), skips masked key blocks
    pallas_tpu  attention_pallas_tpu.py  fused-mask flash kernel (Mosaic), skips masked key blocks

`implementation=None` picks the Pallas kernel of the platform on GPU/TPU and `xla` on CPU. A backend
never ignores part of its input silently: a configuration it cannot honour raises, naming why.
"""
from __future__ import annotations

import importlib

import jax

from glm_jax.ops import mask as mask_lib

IMPLEMENTATIONS = ("reference", "xla", "pallas_gpu", "pallas_tpu")
_MODULES = {
    "reference": "glm_jax.ops.attention_reference",
    "xla": "glm_jax.ops.attention_xla",
    "pallas_gpu": "glm_jax.ops.attention_pallas_gpu",
    "pallas_tpu": "glm_jax.ops.attention_pallas_tpu",
}
_PLATFORM_DEFAULT = {"cpu": "xla", "gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu", "tpu": "pallas_tpu"}


def default_implementation(platform: str | None = None) -> str:
  platform = platform or jax.default_backend()
  if platform not in _PLATFORM_DEFAULT:
    raise ValueError(f"no GLM attention implementation for platform {platform!r}; "
                     f"pass implementation= one of {IMPLEMENTATIONS}")
  return _PLATFORM_DEFAULT[platform]


def attention(q, k, v, *, sep, segment_ids=None, implementation: str | None = None,
              dropout_rate: float = 0.0, dropout_rng=None, **backend_options):
  """GLM attention: A bidirectional, B causal, per-example `sep`, packed segments.

  Args:
    q, k, v: [B, L, H, D] (the jax.nn.dot_product_attention layout).
    sep: int [B] (per example, one segment per row) or [B, L] (per token, the Part A length of the token's
      own segment; 0 on padding).
    segment_ids: optional int [B, L], packed example number 1..n, 0 for padding.
    implementation: None (platform default), or one of IMPLEMENTATIONS.
    dropout_rate, dropout_rng: dropout on attention probabilities; backends that cannot apply it raise.
    **backend_options: passed to the backend (block sizes, interpret mode, ...).
  Returns:
    [B, L, H, D] in q.dtype; padding rows are zero.
  """
  if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
    raise ValueError(f"q, k, v must share one [B, L, H, D] shape; got {q.shape}, {k.shape}, {v.shape}")
  implementation = implementation or default_implementation()
  if implementation not in _MODULES:
    raise ValueError(f"unknown attention implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError(f"dropout_rate={dropout_rate} needs a dropout_rng")
  sep, segment_ids = mask_lib.canonicalize(sep, segment_ids, q.shape[1])
  backend = importlib.import_module(_MODULES[implementation])
  return backend.attention(q, k, v, sep=sep, segment_ids=segment_ids, dropout_rate=dropout_rate,
                           dropout_rng=dropout_rng, **backend_options)

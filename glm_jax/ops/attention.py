"""The one public entry point for GLM attention; it dispatches to one file per backend.

    reference   attention_reference.py   materialized mask, O(L^2) memory: the oracle
    xla         attention_xla.py         blockwise online softmax + recomputing custom_vjp, O(L) memory
    pallas_gpu  attention_pallas_gpu.py  fused-mask flash kernel (Triton lowering), skips masked key blocks
    pallas_tpu  attention_pallas_tpu.py  fused-mask flash kernel (Mosaic), skips masked key blocks
    (cache)     attention_cache.py       queries of a new chunk against a key/value cache (decoding, scoring)

`implementation=None` picks the Pallas kernel of the platform on GPU/TPU and `xla` on CPU. A backend
never ignores part of its input silently: a configuration it cannot honour raises, naming why. Given a cache
(`k_cache`, `v_cache`, `cache_lengths`), the queries run against it in attention_cache.py on every platform and for
every `implementation`: one query reading the cache is bound by that read, which plain XLA does at full speed.

Meshes: XLA cannot partition a Pallas kernel (a custom call); left alone it would gather q, k and v onto every
device and run the whole batch there. So under a multi-device mesh (jax.sharding.use_abstract_mesh, as the
training step traces the model) the Pallas backends run per shard inside `jax.shard_map`, with q, k, v split as
`partition_spec` says (batch and heads only: attention needs no communication across either); the model passes
its logical activation axes. Without a partition_spec there they raise. Inside a shard_map that made some
axes manual already, they split over the remaining axes only. Each shard folds its index into the
dropout_rng, so shards (whose kernels number their rows and heads from 0) drop independently. `xla` and
`reference` are plain XLA and are partitioned by XLA like the rest of the model.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from glm_jax.ops import attention_cache, mask as mask_lib

IMPLEMENTATIONS = ("reference", "xla", "pallas_gpu", "pallas_tpu")
_MODULES = {
  "reference": "glm_jax.ops.attention_reference",
  "xla": "glm_jax.ops.attention_xla",
  "pallas_gpu": "glm_jax.ops.attention_pallas_gpu",
  "pallas_tpu": "glm_jax.ops.attention_pallas_tpu",
}
PALLAS_IMPLEMENTATIONS = ("pallas_gpu", "pallas_tpu")
_PLATFORM_DEFAULT = {"cpu": "xla", "gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu", "tpu": "pallas_tpu"}


def default_implementation(platform: str | None = None) -> str:
  platform = platform or jax.default_backend()
  if platform not in _PLATFORM_DEFAULT:
    raise ValueError(
      f"no GLM attention implementation for platform {platform!r}; pass implementation= one of {IMPLEMENTATIONS}"
    )
  return _PLATFORM_DEFAULT[platform]


def attention(
  q,
  k,
  v,
  *,
  sep,
  segment_ids=None,
  implementation: str | None = None,
  dropout_rate: float = 0.0,
  dropout_rng=None,
  partition_spec: P | None = None,
  k_cache=None,
  v_cache=None,
  cache_lengths=None,
  chunk_in_cache: bool = False,
  **backend_options,
):
  """GLM attention: A bidirectional, B causal, per-example `sep`, packed segments.

  Args:
    q, k, v: [B, L, H, D] (the jax.nn.dot_product_attention layout).
    sep: int [B] (per example, one segment per row) or [B, L] (per token, the Part A length of the token's
      own segment; 0 on padding).
    segment_ids: optional int [B, L], packed example number 1..n, 0 for padding.
    implementation: None (platform default), or one of IMPLEMENTATIONS.
    dropout_rate, dropout_rng: dropout on attention probabilities; backends that cannot apply it raise.
    partition_spec: how q, k, v [B, L, H, D] are split over the context mesh, e.g. P(("data", "fsdp"), None,
      "tensor", None); L and D must be unsplit. Used by the Pallas backends under a multi-device mesh (see the
      module docstring), ignored by the others.
    k_cache, v_cache, cache_lengths: optional [B, H, Lc, D], [B, H, Lc, D] and int [B]: the keys and values of each
      row's earlier tokens, valid below cache_lengths. q, k, v are then a chunk of Lq new tokens after them (Lq + Lc
      keys in all), each seeing every valid cache entry and, within the chunk, the rule of `sep` and `segment_ids`
      (the chunk's own: sep 0 for Part B tokens).
    chunk_in_cache: the chunk's k, v were already written into the cache at entries cache_lengths ..
      cache_lengths + Lq - 1 (k and v are then not read again): a decode loop's in-place update.
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
  if k_cache is not None or v_cache is not None or cache_lengths is not None:
    return _against_cache(q, k, v, k_cache, v_cache, cache_lengths, sep, segment_ids, dropout_rate, chunk_in_cache)
  if chunk_in_cache:
    raise ValueError("chunk_in_cache needs k_cache, v_cache and cache_lengths")
  backend = importlib.import_module(_MODULES[implementation])
  call = functools.partial(backend.attention, dropout_rate=dropout_rate, **backend_options)
  mesh = jax.sharding.get_abstract_mesh()
  if implementation in PALLAS_IMPLEMENTATIONS and not mesh.empty and mesh.size > 1 and not mesh.are_all_axes_manual:
    call = _per_shard(call, mesh, partition_spec, implementation)
  return call(q, k, v, sep=sep, segment_ids=segment_ids, dropout_rng=dropout_rng)


def _against_cache(q, k, v, k_cache, v_cache, cache_lengths, sep, segment_ids, dropout_rate, chunk_in_cache):
  if k_cache is None or v_cache is None or cache_lengths is None:
    raise ValueError("attention against a cache needs all of k_cache, v_cache and cache_lengths")
  batch, _, heads, head_dim = q.shape
  layout = (batch, heads, head_dim)  # of [B, H, Lc, D]
  if k_cache.ndim != 4 or k_cache.shape != v_cache.shape or (*k_cache.shape[:2], k_cache.shape[3]) != layout:
    raise ValueError(
      f"k_cache and v_cache must share one [B, H, Lc, D] shape with B, H, D of q {q.shape}; got {k_cache.shape}, "
      f"{v_cache.shape}"
    )
  if jnp.shape(cache_lengths) != (batch,):
    raise ValueError(f"cache_lengths has shape {jnp.shape(cache_lengths)}; expected [B] = ({batch},)")
  if dropout_rate > 0.0:
    raise ValueError("attention against a cache is for inference: dropout_rate must be 0")
  cache = dict(k_cache=k_cache, v_cache=v_cache, cache_lengths=jnp.asarray(cache_lengths, jnp.int32))
  if chunk_in_cache:
    return attention_cache.attention_in_cache(q, sep=sep, segment_ids=segment_ids, **cache)
  return attention_cache.attention(q, k, v, sep=sep, segment_ids=segment_ids, **cache)


def _per_shard(call, mesh, partition_spec: P | None, implementation: str):
  """`call` run on each device's [B/b, L, H/h, D] block of q, k, v (and its rows of sep, segment_ids).

  Inside a shard_map that made some mesh axes manual already (a user's or a pipeline's), q, k, v are that
  shard_map's local blocks: the kernel is split over the remaining axes only, and the spec's manual axes
  are dropped.
  """
  if partition_spec is None:
    raise ValueError(
      f"{implementation} under a {mesh.size}-device mesh needs partition_spec= (how q, k, v are "
      f"split over {mesh.axis_names}): XLA cannot partition a Pallas kernel and would run the whole "
      f"batch on every device"
    )
  if len(partition_spec) != 4 or partition_spec[1] is not None or partition_spec[3] is not None:
    raise ValueError(f"partition_spec {partition_spec} for q, k, v [B, L, H, D] may split only B and H")
  manual = set(mesh.manual_axes)
  free_axes = frozenset(mesh.axis_names) - manual
  spec = P(*(_without(entry, manual) for entry in partition_spec))
  rows = P(spec[0], None)

  # Each shard's kernel numbers its rows and heads from 0: its dropout stream must differ from the others'.
  shard_axes = tuple(name for name in mesh.axis_names if name in free_axes)

  def per_shard(q, k, v, sep, segment_ids, dropout_rng):
    if dropout_rng is not None:
      dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(shard_axes))
    return call(q, k, v, sep=sep, segment_ids=segment_ids, dropout_rng=dropout_rng)

  def sharded(q, k, v, *, sep, segment_ids, dropout_rng=None):
    rng_spec = None if dropout_rng is None else P()
    return jax.shard_map(
      per_shard,
      mesh=mesh,
      in_specs=(spec,) * 3 + (rows, rows, rng_spec),
      out_specs=spec,
      axis_names=free_axes,
      check_vma=False,
    )(q, k, v, sep, segment_ids, dropout_rng)

  return sharded


def _without(entry, axes: set[str]):
  """A PartitionSpec entry (None, a name or a tuple of names) without the names in `axes`."""
  names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
  kept = tuple(name for name in names if name not in axes)
  return None if not kept else (kept[0] if len(kept) == 1 else kept)

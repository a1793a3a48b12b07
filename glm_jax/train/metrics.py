"""What a person watching a run reads: FLOPs per token and MFU, TensorBoard scalars, a JSONL log and the
loss-curve PNG."""

from __future__ import annotations

import io
import json
import os

import jax
from etils import epath

from glm_jax.model import GLMConfig

# Peak dense bf16 FLOP/s per device (vendor datasheets). Unknown devices need an explicit peak.
PEAK_FLOPS_PER_DEVICE = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100": 312e12,
}
# CPU has no datasheet number: assume 2 AVX FMA units x 8 float32 lanes x 2 FLOPs at 3 GHz per core.
CPU_FLOPS_PER_CORE_ESTIMATE = 2 * 8 * 2 * 3e9


def flops_per_token(config: GLMConfig, length: int) -> float:
  """Training FLOPs per token (forward + backward), the PaLM appendix B formula:

      6 * N + 12 * num_layers * length * hidden_size

  N = non-embedding parameters plus the tied output projection (V * E, a matmul per token); the second term
  is the attention score and value matmuls (QK^T and PV), which the parameter count misses.
  """
  e, f, n = config.hidden_size, config.mlp_dim, config.num_layers
  per_layer = 4 * e * e + 2 * e * f  # QKV + output projection + MLP matmuls
  matmul_params = n * per_layer + config.padded_vocab_size * e
  return 6.0 * matmul_params + 12.0 * n * length * e


def peak_flops_per_device(device: jax.Device | None = None, override: float | None = None) -> tuple[float, bool]:
  """(peak FLOP/s of one device, whether it is an estimate). `override` wins; CPU is always an estimate."""
  if override:
    return float(override), False
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return CPU_FLOPS_PER_CORE_ESTIMATE * (os.cpu_count() or 1) / jax.local_device_count(), True
  for kind, peak in PEAK_FLOPS_PER_DEVICE.items():
    if device.device_kind.startswith(kind):
      return peak, False
  raise ValueError(
    f"no peak FLOP/s known for device kind {device.device_kind!r}; set "
    f"TrainConfig.peak_flops_per_device to its datasheet value"
  )


def mfu(tokens_per_second: float, flops_token: float, peak_per_device: float, num_devices: int) -> float:
  """Model FLOPs utilization: achieved model FLOP/s over the peak of all devices."""
  return tokens_per_second * flops_token / (peak_per_device * num_devices)


def _is_local(path: str) -> bool:
  return "://" not in os.fspath(path)


def append_jsonl(path: str, record: dict) -> None:
  """Appends one JSON line to `path`: a local file, or any etils.epath (gs://, ...), where object stores
  cannot append and the file is rewritten whole (a metrics file stays small: one line per logged step)."""
  line = json.dumps(record) + "\n"
  if _is_local(path):
    with open(path, "a") as f:
      f.write(line)
    return
  target = epath.Path(path)
  target.write_text((target.read_text() if target.exists() else "") + line)


def read_jsonl(path: str) -> list[dict]:
  target = epath.Path(path)
  if not target.exists():
    return []
  return [json.loads(line) for line in target.read_text().splitlines() if line.strip()]


def plot_loss_curve(records: list[dict], path: str) -> None:
  """Train and eval loss against step (records with "split" and "loss"; an evaluation by its hook alone has no loss),
  written as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  for split, style in (("train", "-"), ("eval", "o-")):
    points = sorted((r["step"], r["loss"]) for r in records if r.get("split") == split and "loss" in r)
    if points:
      ax.plot(*zip(*points), style, label=f"{split} loss", markersize=4)
  ax.set_xlabel("step")
  ax.set_ylabel("cross entropy on Part B (nats/token)")
  ax.set_title("GLM blank infilling")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:  # a run resumed at its last step has no new point
    ax.legend()
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100)
  plt.close(fig)
  epath.Path(path).write_bytes(png.getvalue())  # local or gs://

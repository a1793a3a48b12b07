"""Test-wide setup: 8 host devices for mesh tests, CPU only, quiet TensorFlow.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives in the root conftest.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow must never claim an accelerator in tests.

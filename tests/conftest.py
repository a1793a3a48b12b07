"""Test-wide setup: 8 host devices for mesh tests, CPU only, quiet TensorFlow, one compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives in the root conftest.

Many tests compile the same small programs (in this process, in the other xdist worker, and in the training
subprocesses they start), so the session shares one persistent JAX compilation cache, created fresh for each
pytest run (the controller creates it; xdist workers and subprocesses inherit the variable) and removed at exit.
It only saves compile time: a cached executable is the one the compiler would have produced.
"""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow must never claim an accelerator in tests.

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="glm_jax_test_jit_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

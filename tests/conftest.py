import os

# Allocate device memory as needed, not most of it up front: tests and notebooks share the device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

# The tests check formulas against float64 or numpy references, on any backend: full
# float32 matrix products everywhere (GPUs multiply float32 matrices in TF32 by default,
# a relative error of ~5e-4, which is the hardware's rounding, not the formula's).
jax.config.update("jax_default_matmul_precision", "highest")

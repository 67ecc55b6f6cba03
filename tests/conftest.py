import os
import shutil
import tempfile

# Allocate device memory as needed, not most of it up front: tests and notebooks share the device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# One XLA compilation cache for the run, shared by the xdist workers, the notebooks' kernels and
# the tests' subprocesses (each inherits this environment): a program that one process compiled is
# read back by the others, not compiled again. On a CPU most of these tests' time is compiling.
# The cache starts empty in a fresh folder and is removed at the end, so no run reuses another's
# (a JAX_COMPILATION_CACHE_DIR of your own is used as it is, and kept).
RUN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    RUN_CACHE = tempfile.mkdtemp(prefix="minilopt-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = RUN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program, eager ops too

# LLVM's -O2 for the code XLA generates on a CPU, not XLA's default -O3: compiling is most of this
# suite's time, and -O2 compiles about 1.2-2x faster. The numbers differ only in rounding (where
# LLVM vectorises differently): Adam sweeps and lesson 07's ES estimates come out bit for bit the
# same, and 300 steps of each shipped learned optimizer within 4e-6 of the loss. The notebooks'
# kernels and the tests' subprocesses inherit it; an optimisation level of your own is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=2").strip()

import jax  # noqa: E402

# The tests check formulas against float64 or numpy references, on any backend: full
# float32 matrix products (GPUs multiply float32 matrices in TF32 by default, a relative
# error of ~5e-4, which is the hardware's rounding, not the formula's). A CPU multiplies in
# full float32 at any setting, bit for bit the same; there the setting is left alone, so
# that the tests' programs are the notebooks' programs, and the cache above serves both.
if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")


# The slowest files, measured with `pytest --durations=0` on the 2-core machine (each took 25-60 s
# there, with the shared cache). `make test` passes --no-loadscope-reorder and runs these first, so
# that no xdist worker is handed one of them at the end while the other idles: xdist's default order
# (files with the most tests first) put exactly these last, as each has few tests. The other files
# keep their collection order; cells of a notebook stay in order (the sort is stable, and a file is
# one unit of work under --dist loadfile). Lesson 07 starts early: test_meta_estimators.py and
# test_meta_widget.py, which come later, run its compiled ES programs from the cache. The capstone
# starts a while after lesson 08, whose meta-training step it runs from the cache.
SLOWEST_FIRST = (
    "tests/test_browser.py", "tests/test_velo_fast.py", "notebooks/07_evolution_strategies.ipynb",
    "tests/test_velo_kernels.py", "notebooks/08_meta_training_for_real.ipynb", "tests/test_velo_parity.py",
    "tests/test_tasks.py", "solutions/12_capstone.ipynb", "tests/test_evaluate.py",
    "tests/test_tasks_suite.py", "tests/test_hyper_parity.py", "tests/test_guard.py",
    "notebooks/10_stability_and_safeguards.ipynb", "notebooks/11_what_did_it_learn.ipynb",
    "notebooks/05_inside_velo.ipynb",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_unconfigure(config):
    if RUN_CACHE is not None:
        shutil.rmtree(RUN_CACHE, ignore_errors=True)

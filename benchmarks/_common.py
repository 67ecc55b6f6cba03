"""Shared by the benchmark scripts: device description, timing, and result files."""
from __future__ import annotations

import json
import pathlib
import platform
import time

import jax

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def device_info() -> dict:
    d = jax.devices()[0]
    return {"platform": d.platform, "device": d.device_kind, "count": jax.device_count(),
            "jax": jax.__version__, "host": platform.processor() or platform.machine()}


def best_time(fn, repeats: int = 5) -> float:
    """Best wall time of `fn()` over `repeats` calls; `fn` must block until done."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def write(name: str, payload: dict, quick: bool) -> pathlib.Path:
    """Write results/<name>[_quick]_<platform>.json and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}{'_quick' if quick else ''}_{jax.devices()[0].platform}.json"
    path.write_text(json.dumps({"device": device_info(), **payload}, indent=2) + "\n")
    return path

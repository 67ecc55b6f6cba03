"""(Noisy) quadratics: the smallest tasks with closed-form answers.

    L(x; c) = ½ Σ_i h_i (x_i − c_i)²,    c = center + noise · ξ,  ξ ~ N(0, I)

Each batch draws a fresh target `c`. With `noise = 0` this is a plain quadratic; with
`noise > 0` it is the noisy quadratic model of Schaul et al. 2013 and Wu et al. 2018
("short-horizon bias"). The expected loss is minimised at `x* = center`, where it is
`½ Σ h_i noise²`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .base import Task, TaskFamily, check_batch_shape, pytree_dataclass, split_key, static


@pytree_dataclass
class QuadraticTask(Task):
    curvatures: jnp.ndarray          # h, shape (dim,)
    center: jnp.ndarray              # optimum of the expected loss, shape (dim,)
    noise: jnp.ndarray               # std of the per-batch target noise
    init_scale: jnp.ndarray          # x0 ~ N(0, init_scale²)
    batch_size: int = static(1)      # noisy targets averaged per batch
    name: str = static("quadratic")

    @property
    def dim(self) -> int:
        return self.curvatures.shape[-1]

    def init(self, key):
        return {"x": self.init_scale * jax.random.normal(key, (self.dim,))}

    def batch(self, key, split: str = "train"):
        xi = jax.random.normal(key, (self.batch_size, self.dim))
        return self.center + self.noise * xi

    def loss(self, params, batch):
        check_batch_shape(self.name, "the batch of targets", batch, (self.dim,))
        return 0.5 * jnp.mean(jnp.sum(self.curvatures * (params["x"] - batch) ** 2, axis=-1))

    def optimum(self):
        """The minimiser of the expected loss."""
        return {"x": self.center}

    def min_expected_loss(self):
        """E[L] at the optimum: ½ Σ h · noise² (a bigger batch lowers the gradient's
        noise, not the expected loss)."""
        return 0.5 * jnp.sum(self.curvatures) * self.noise**2


def quadratic(dim: int = 10, condition: float = 100.0, noise: float = 0.0, init_scale: float = 1.0,
              batch_size: int = 1, name: str | None = None) -> QuadraticTask:
    """A quadratic with curvatures log-spaced from 1 down to 1/condition, optimum at 1."""
    if dim < 1 or condition < 1:
        raise ValueError(f"need dim >= 1 and condition >= 1, got dim={dim}, condition={condition}")
    return QuadraticTask(
        curvatures=jnp.logspace(0.0, -jnp.log10(condition), dim),
        center=jnp.ones((dim,)),
        noise=jnp.asarray(noise, jnp.float32),
        init_scale=jnp.asarray(init_scale, jnp.float32),
        batch_size=batch_size,
        name=name or ("noisy_quadratic" if noise else "quadratic"),
    )


def noisy_quadratic(dim: int = 10, condition: float = 100.0, noise: float = 1.0, **kw) -> QuadraticTask:
    return quadratic(dim, condition, noise, **kw)


class QuadraticFamily(TaskFamily):
    """Random quadratics of one dimension: log-uniform curvatures in
    [1/max_condition, 1], a Gaussian center, log-uniform noise. `sample` is
    traceable, so it runs inside jit and vmap."""

    def __init__(self, dim: int = 10, max_condition: float = 1e3, noise_range=(0.0, 0.0),
                 init_scale: float = 1.0, batch_size: int = 1):
        self.dim, self.max_condition, self.noise_range = dim, max_condition, noise_range
        self.init_scale, self.batch_size = init_scale, batch_size
        self.name = f"quadratic_family_{dim}"

    def sample(self, key, split: str = "train") -> QuadraticTask:
        k_h, k_c, k_n = jax.random.split(split_key(key, split), 3)
        log_h = jax.random.uniform(k_h, (self.dim,), minval=-jnp.log(self.max_condition), maxval=0.0)
        lo, hi = self.noise_range
        if hi > 0:
            noise = jnp.exp(jax.random.uniform(k_n, (), minval=jnp.log(max(lo, 1e-8)), maxval=jnp.log(hi)))
        else:
            noise = jnp.zeros(())
        return QuadraticTask(jnp.exp(log_h), jax.random.normal(k_c, (self.dim,)), noise,
                             jnp.asarray(self.init_scale, jnp.float32), self.batch_size, self.name)

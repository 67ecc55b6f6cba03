"""minilopt: optimizers that tune themselves, in small readable JAX.

The public API is re-exported here; each idea lives in its own module.
"""
__version__ = "0.1.0"

"""The one place where numeric precision is set.

mlverify computes everything in float64. JAX defaults to float32, so importing mlverify
enables ``jax_enable_x64`` before any array is made. Every array mlverify creates is also
given ``dtype=float64`` explicitly, so nothing depends on JAX's weak-type promotion.
"""

import jax

jax.config.update("jax_enable_x64", True)

FLOAT = "float64"

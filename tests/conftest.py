"""Test configuration: float64 is on because importing mlverify switches it on (the one
documented place, mlverify/_config.py); here we assert it rather than set it again."""

import os
import tempfile

import jax
import pytest

# mlverify verify keeps JAX's compiled programs on disk by default: the tests' runs use a
# folder of their own, not the user's cache.
os.environ.setdefault("MLVERIFY_CACHE_DIR", tempfile.mkdtemp(prefix="mlverify-test-cache-"))

import mlverify  # noqa: F401


@pytest.fixture(autouse=True, scope="session")
def _float64_is_on():
    assert jax.config.jax_enable_x64, "mlverify must switch JAX to float64 on import"

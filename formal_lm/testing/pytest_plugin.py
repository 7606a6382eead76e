"""pytest fixtures of ``formal_lm.testing``. Enable with, in a ``conftest.py``::

    pytest_plugins = ["formal_lm.testing.pytest_plugin"]

``trained_model_factory`` trains (or loads from the cache) a tiny model for a config. Its cache
lives in pytest's cache directory (``.pytest_cache/d/formal_lm_models``; ``pytest
--cache-clear`` empties it) unless ``$FORMAL_LM_MODEL_CACHE`` names another place.
"""
from __future__ import annotations

import os

import pytest

from formal_lm.testing._training import CACHE_ENV, trained_model


@pytest.fixture(scope="session")
def trained_model_factory(pytestconfig):
    """``factory(config, seed=None, which="best") -> model_fn``, cached across sessions."""
    cache_dir = os.environ.get(CACHE_ENV) or pytestconfig.cache.mkdir("formal_lm_models")

    def factory(config, *, seed=None, which="best"):
        return trained_model(config, cache_dir=cache_dir, seed=seed, which=which)

    return factory

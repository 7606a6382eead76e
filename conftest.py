"""Test settings shared by the suite.

Hypothesis runs derandomized (the same examples on every run, so CI is reproducible) and
without an example database; `HYPOTHESIS_PROFILE=explore` searches fresh examples instead.
"""
import os

from hypothesis import settings

settings.register_profile("default", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

"""Tiny trained models for tests, cached on disk by config.

The cache key is a hash of the config in its file layout (``TrainConfig.to_dict``) plus the
language's repr, so the same config trains once per cache directory. Training writes into a
temporary directory next to the final one and renames it when done, so an interrupted or
concurrent run never leaves a half-written cache entry behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from formal_lm.errors import FormalLMError, Problem

CACHE_ENV = "FORMAL_LM_MODEL_CACHE"


def default_cache_dir() -> Path:
    """``$FORMAL_LM_MODEL_CACHE``, else ``~/.cache/formal_lm/models``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "formal_lm" / "models")


def _as_config(config):
    from formal_lm.training import TrainConfig
    from formal_lm.training.config import config_from_dict
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config, source="trained_model(config=...)")
    raise FormalLMError(Problem(f"config={config!r} must be a TrainConfig or a dict in the "
                                "training file layout", "e.g. {'language': 'anbn-short', "
                                "'steps': 300, 'model': {'name': 'transformer'}}"))


def cache_key(config) -> str:
    """The cache key of a config (a TrainConfig or a dict in the file layout)."""
    config = _as_config(config)
    from formal_lm.training.checkpoint import FORMAT
    lang = config.language if isinstance(config.language, str) else repr(config.language)
    blob = json.dumps({"config": config.to_dict(), "language": lang, "format": FORMAT},
                      sort_keys=True, default=str)
    return f"{config.language_name()}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def trained_model(config, *, cache_dir: str | Path | None = None, seed: int | None = None,
                  which: str = "best"):
    """A predictor (``ids [B, T] -> logits [B, T, V]``) trained with ``config``, from the cache
    when this config was trained before (``formal_lm.training.train`` otherwise).

    Args:
        config: a :class:`formal_lm.training.TrainConfig`, or a dict in the training file layout.
        cache_dir: where trained runs live (default :func:`default_cache_dir`).
        seed: which of the config's seeds to return (default the first).
        which: "best" (lowest validation loss) or "last" checkpoint.

    Example:
        >>> fn = trained_model({"language": "anbn-short", "steps": 2, "eval_every": 1,
        ...                     "model": {"name": "transformer", "d_model": 8, "n_heads": 2,
        ...                               "d_ff": 16, "n_layers": 1}})  # doctest: +SKIP
    """
    from formal_lm.analysis.predictor import as_predictor
    from formal_lm.training import train

    config = _as_config(config)
    seed = config.seeds[0] if seed is None else seed
    if seed not in config.seeds:
        raise FormalLMError(Problem(f"seed={seed} is not one of the config's seeds "
                                    f"{list(config.seeds)}", "pick one of them"))
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    run_dir = root / cache_key(config)
    done = run_dir / "checkpoints" / f"{which}.msgpack"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=run_dir.name + ".tmp-", dir=root))
        try:
            train(config, tmp, progress=False)
            try:
                tmp.rename(run_dir)
            except OSError:  # another process finished first: keep its run
                if not done.exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return as_predictor(run_dir, seed=seed, which=which)

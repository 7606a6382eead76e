"""The models of a run, restored from its checkpoints without building the training program.

Shape glossary:  K seeds
"""
from __future__ import annotations

from pathlib import Path

import jax
from flax import nnx

from formal_lm.errors import FormalLMError, Problem
from formal_lm.training import checkpoint as ckpt
from formal_lm.training.config import config_from_dict
from formal_lm.training.programs import build_model

CHECKPOINTS = ("best", "last")


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    """``RUN_DIR/checkpoints/{which}.msgpack`` (which: "best" or "last")."""
    if which not in CHECKPOINTS:
        raise FormalLMError(Problem(f"which={which!r} is not allowed", f"use one of {CHECKPOINTS}"))
    return Path(run_dir) / "checkpoints" / f"{which}.msgpack"


def load_checkpoint(path: str | Path) -> tuple[list[nnx.Module], dict]:
    """(one eval-mode model per seed, metadata) from a checkpoint file.

    Each model's structure comes from the stored config (built abstractly: no initialiser runs)
    and its parameters and other state are filled in by path from the checkpoint's stacked
    [K, ...] arrays.
    """
    meta, trees = ckpt.read(path)
    try:
        config = config_from_dict(meta["identity"]["config"], source=str(path))
        seeds, vocab_size = meta["seeds"], meta["vocab_size"]
    except (KeyError, TypeError):
        raise FormalLMError(Problem(f"checkpoint {path} lacks its config",
                                    "retrain the run with this version of formal_lm")) from None
    if "rest" not in trees:
        raise FormalLMError(Problem(f"checkpoint {path} lacks the models' state",
                                    "retrain the run with this version of formal_lm"))
    abstract = nnx.eval_shape(lambda: build_model(config, vocab_size, 0))  # no initialisers run
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    out = []
    for k in range(len(seeds)):
        mine = {name: {p: a[k] for p, a in trees[name].items()} for name in ("params", "rest")}
        out.append(nnx.merge(graphdef, ckpt.restore(params, mine["params"], source=str(path)),
                             ckpt.restore(rest, mine["rest"], source=str(path))))
    return out, meta


def load_models(run_dir: str | Path, which: str = "best") -> list[nnx.Module]:
    """Per-seed models of a run: ``which="best"`` (lowest validation loss) or ``"last"``."""
    return load_checkpoint(checkpoint_path(run_dir, which))[0]


def stacked_params(run_dir: str | Path, seeds, which: str = "last"):
    """The parameters of ``seeds`` of a run, stacked [K, ...] in that order (to start another
    run from them, e.g. fine-tuning)."""
    models, meta = load_checkpoint(checkpoint_path(run_dir, which))
    missing = [s for s in seeds if s not in meta["seeds"]]
    if missing:
        raise FormalLMError(Problem(f"seeds {missing} are not in the run {run_dir}",
                                    f"its seeds: {meta['seeds']}"))
    params = [nnx.state(models[meta["seeds"].index(s)], nnx.Param) for s in seeds]
    return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *params)

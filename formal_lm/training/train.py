"""``train(config, run_dir)``: the training loop (:func:`loop.fit`) on exact samples of the
config's language."""
from __future__ import annotations

from pathlib import Path

from formal_lm.errors import FormalLMError, Problem
from formal_lm.training.config import TrainConfig
from formal_lm.training.data import LanguageData
from formal_lm.training.loop import TrainResult, finished, fit


def resolve_language(config: TrainConfig):
    """The config's ``Language`` (loading a grammar name or path)."""
    if config.language is None:
        raise FormalLMError(Problem("the config names no language",
                                    "set language = a grammar name or a path to a .toml file"))
    if not isinstance(config.language, str):
        return config.language
    from formal_lm.grammar_files import load
    return load(config.language)


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
          progress: bool = True, mesh="auto", init=None, split: dict | None = None
          ) -> TrainResult:
    """Trains every seed of ``config`` on exact samples of its language (see :func:`fit`).

    Args:
        config: the training config.
        run_dir: output directory; a directory that already holds a run needs ``resume=True``.
        resume: continue from the last checkpoint (the result equals an uninterrupted run).
        progress: show a progress bar with per-seed loss and the exact optimal loss.
        mesh: "auto", None or a jax Mesh (see :func:`fit`).
        init: parameters to start from, stacked over seeds (fine-tuning); None: fresh.
        split: the completion objective's OOD prompt split to use (default: computed from the
            language, ``objectives.ood_split``).

    Example:
        >>> import tempfile, formal_lm as fl
        >>> cfg = TrainConfig(language=fl.load("anbn"), steps=2, seeds=2, eval_every=2,
        ...                   model_config=dict(d_model=8, n_heads=2, d_ff=16, n_layers=1))
        >>> res = train(cfg, tempfile.mkdtemp(), progress=False)  # doctest: +SKIP
        >>> res.step  # doctest: +SKIP
        2
    """
    lang = resolve_language(config)
    data = LanguageData(lang, config.data, config.batch_size, config.objective, split)
    return fit(config, data, run_dir, init=init, resume=resume, progress=progress, mesh=mesh)


def finished_run(config: TrainConfig, run_dir: str | Path, *, init=None,
                 split: dict | None = None) -> TrainResult | None:
    """The result of a finished ``train`` run of ``config`` in ``run_dir``, without training
    (see :func:`loop.finished`); None when it is absent, unfinished or stale."""
    lang = resolve_language(config)
    data = LanguageData(lang, config.data, config.batch_size, config.objective, split)
    return finished(config, data, run_dir, init=init)


"""Dispatch from ``run_experiment`` to the case-study runners (``formal_lm.casestudies``).

An experiment file whose ``[experiment] kind`` is "icl" or "finetune" is not a grid of
languages x models x objectives; it is run by ``run_icl_experiment`` / ``run_finetune_experiment``.
"""
from __future__ import annotations

from formal_lm.errors import FormalLMError, Problem


def run_case_study(path, out_dir, *, full: bool = False, progress: bool = True) -> dict | None:
    """Runs ``path`` if it is a case-study file and returns its results; None otherwise."""
    from formal_lm.casestudies import experiments as cs
    try:
        kind = cs.experiment_kind(path)
    except FormalLMError:
        return None  # unreadable: the grid runner reports it
    if kind is None:
        return None
    if full:
        raise FormalLMError(Problem(f"{path}: case-study files have no [full] table",
                                    "run without --full and edit the file's sizes instead"))
    run = cs.run_icl_experiment if kind == "icl" else cs.run_finetune_experiment
    return run(path, out_dir, progress=progress)

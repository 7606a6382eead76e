"""Training runs of an experiment: resume what exists, retrain (and say so) what changed."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from formal_lm.training.loop import RunChanged, TrainResult


def log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[formal_lm.experiments] {msg}", flush=True)


def train_or_retrain(go: Callable[[bool], TrainResult], run_dir: Path, *,
                     resume: bool) -> TrainResult:
    """``go(resume)`` trains into ``run_dir``. A run there that another config, language or start
    produced is deleted and retrained from scratch, with a message: results are never reused
    under a definition that has changed. ``resume=False`` (``formal-lm run --restart``) replaces
    whatever is there."""
    if not resume and run_dir.exists():
        log(True, f"{run_dir.name}: --restart: training it again from scratch")
        shutil.rmtree(run_dir)
    try:
        return go(resume)
    except RunChanged as e:
        if not resume:
            raise
        log(True, f"{run_dir.name}: {e.problems[0].message}; retraining it from scratch")
        shutil.rmtree(run_dir)
        return go(False)

"""``run_experiment(path, out_dir)``: load an experiment file and run its kind."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from formal_lm.errors import FormalLMError, Problem
from formal_lm.experiments.finetune import run_finetune
from formal_lm.experiments.grid import cell_specs as grid_cell_specs
from formal_lm.experiments.grid import run_grid
from formal_lm.experiments.icl import run_icl
from formal_lm.experiments.loader import load_experiment
from formal_lm.experiments.probing import run_probing
from formal_lm.experiments.tasks_run import run_tasks
from formal_lm.experiments.tasks_run import units as task_units
from formal_lm.training.lock import hold

RUNNERS = {"grid": run_grid, "icl": run_icl, "finetune": run_finetune, "probing": run_probing,
           "tasks": run_tasks}


def units(ex) -> list[str]:
    """The independent training runs of an experiment that jobs can share out: a grid's cells,
    a tasks experiment's (task, model) runs, an ICL study's models (a fine-tuning study's
    runs depend on each other: not shared out)."""
    if ex.kind in ("grid", "probing"):
        return [spec[0] for spec in grid_cell_specs(ex)]
    if ex.kind == "icl":
        return list(ex.models)
    if ex.kind == "tasks":
        return task_units(ex)
    raise FormalLMError(Problem(f"a {ex.kind} experiment cannot be split into jobs (its "
                                "fine-tuning runs start from its pre-training runs)",
                                "run it as one job"))


def shard_units(ex, shard: str) -> set[str]:
    """The units job ``shard`` = "I/N" trains: every N-th, starting at the I-th (0-based)."""
    try:
        i, n = (int(x) for x in shard.split("/"))
        assert n >= 1 and 0 <= i < n
    except (ValueError, AssertionError):
        raise FormalLMError(Problem(f"shard={shard!r} must be I/N with 0 <= I < N",
                                    "e.g. --shard 0/4 for the first of four jobs")) from None
    return set(units(ex)[i::n])


def run_experiment(path, out_dir, *, full: bool = False, resume: bool = True,
                   progress: bool = True, cells: Sequence[str] = (), shard: str | None = None,
                   report_only: bool = False) -> dict:
    """Trains, analyses and reports an experiment file of any kind.

    Args:
        path: the experiment TOML.
        out_dir: output folder (runs/, results.json, results.csv, report.md, plots).
        full: apply the file's ``[full]`` table (paper sizes; meant for a GPU).
        resume: continue finished or partial runs found under ``out_dir/runs`` (a finished run
            is not retrained; a run whose config or data changed is retrained). With
            ``resume=False`` every run is trained again from scratch, replacing what is there.
        progress: print progress and show training bars.

        cells: train only these units (grid cells or ICL models) and write no report: one job
            of several (each run has its own lock, so jobs share ``out_dir``).
        shard: "I/N": train only the I-th of every N units, no report (a job array).
        report_only: train nothing; analyse and report the units whose runs have finished,
            naming the missing ones (the job that merges the others').

    Returns:
        The results that are also written to ``out_dir/results.json`` (with ``cells`` or
        ``shard``: which units this job trained).
    """
    ex = load_experiment(path, full=full)
    out = Path(out_dir)
    if cells or shard:
        known = units(ex)
        only = set(cells) | (shard_units(ex, shard) if shard else set())
        if bad := sorted(only - set(known)):
            raise FormalLMError(Problem(f"{bad} are not units of {path}", f"use {known}"))
        (out / "runs").mkdir(parents=True, exist_ok=True)
        return RUNNERS[ex.kind](ex, out, resume=resume, progress=progress, only=only,
                                report=False)
    if report_only:
        units(ex)  # a fine-tuning study cannot be merged from jobs
    with hold(out):  # one writer per output folder (each run inside has its own lock too)
        (out / "runs").mkdir(parents=True, exist_ok=True)
        kw = {"train_any": False} if report_only else {}
        return RUNNERS[ex.kind](ex, out, resume=resume, progress=progress, **kw)

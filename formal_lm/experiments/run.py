"""``run_experiment(path, out_dir)``: load an experiment file and run its kind."""
from __future__ import annotations

from pathlib import Path

from formal_lm.experiments.finetune import run_finetune
from formal_lm.experiments.grid import run_grid
from formal_lm.experiments.icl import run_icl
from formal_lm.experiments.loader import load_experiment
from formal_lm.training.lock import hold

RUNNERS = {"grid": run_grid, "icl": run_icl, "finetune": run_finetune}


def run_experiment(path, out_dir, *, full: bool = False, resume: bool = True,
                   progress: bool = True) -> dict:
    """Trains, analyses and reports an experiment file of any kind.

    Args:
        path: the experiment TOML.
        out_dir: output folder (runs/, results.json, results.csv, report.md, plots).
        full: apply the file's ``[full]`` table (paper sizes; meant for a GPU).
        resume: continue finished or partial runs found under ``out_dir/runs`` (a finished run
            is not retrained; a run whose config or data changed is retrained). With
            ``resume=False`` every run is trained again from scratch, replacing what is there.
        progress: print progress and show training bars.

    Returns:
        The results that are also written to ``out_dir/results.json``.
    """
    ex = load_experiment(path, full=full)
    out = Path(out_dir)
    with hold(out):  # one writer per output folder (each run inside has its own lock too)
        (out / "runs").mkdir(parents=True, exist_ok=True)
        return RUNNERS[ex.kind](ex, out, resume=resume, progress=progress)

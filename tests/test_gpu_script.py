"""benchmarks/gpu_run.sh, the prepared GPU run, in its CPU fallback (tiny sizes, about a minute).

The GPU stages themselves need a machine with an NVIDIA GPU; here the script is run with
GPU_RUN_CPU=1 in this test's own virtual environment (no install), and must exit 0 and print
its summary table with every stage ok.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"
STAGES = ("setup", "device", "tests", "bench", "experiment")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils timeout")
def test_cpu_fallback_runs_every_stage_and_prints_the_summary(tmp_path):
    env = {**os.environ, "GPU_RUN_CPU": "1", "GPU_RUN_VENV": sys.prefix,
           "GPU_RUN_OUT": str(tmp_path / "out"), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = out[out.index("=== summary"):]
    assert "mode: cpu" in summary
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in summary.splitlines()[1:] if line.startswith("| ")}
    assert set(STAGES) <= set(rows), summary
    assert all(rows[s] == "ok" for s in STAGES), summary
    assert "ratio" in summary  # the bench row carries the in-run reference ratio
    assert (tmp_path / "out" / "bench.json").is_file()
    assert (tmp_path / "out" / "anbn-tiny" / "report.md").is_file()

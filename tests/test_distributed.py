"""Scale-out: seeds sharded over 8 simulated CPU devices, and 2 processes on 127.0.0.1.

Both run in subprocesses (simulated devices must be set before jax does anything, and
jax.distributed is once per process), each with a hard timeout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120

CONFIG = """
language = "anbn-short"
seeds = 4
steps = 10
batch_size = 8
eval_every = 5
checkpoint_every = 10
[model]
name = "transformer"
d_model = 8
n_heads = 2
d_ff = 16
n_layers = 1
[optimizer]
lr = 0.01
[data]
max_length = 36
bucket = 36
eval_size = 16
"""


def run_python(code: str, *args: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


SHARDED = """
import jax, sys, json
jax.config.update("jax_num_cpu_devices", 8)
from formal_lm.training import load_config, train
from formal_lm.training.programs import default_mesh
cfg = load_config(sys.argv[1])
import dataclasses
cfg = dataclasses.replace(cfg, seeds=tuple(range(8)))
mesh = default_mesh(8)
assert mesh is not None and mesh.devices.size == 8, mesh
a = train(cfg, sys.argv[2] + "/sharded", progress=False, mesh=mesh)
b = train(cfg, sys.argv[2] + "/single", progress=False, mesh=None)
# 2 seeds on 8 devices: 2 along "seeds", each seed's packed rows split 4 ways along "rows"
cfg2 = dataclasses.replace(cfg, seeds=(3, 5))
mesh2 = default_mesh(2)
assert dict(mesh2.shape) == {"seeds": 2, "rows": 4}, mesh2
c = train(cfg2, sys.argv[2] + "/rows", progress=False, mesh=mesh2)
d = train(cfg2, sys.argv[2] + "/rows-single", progress=False, mesh=None)
print(json.dumps({"sharded": a.final + c.final, "single": b.final + d.final,
                  "devices": jax.device_count()}))
"""


def test_seeds_and_rows_sharded_over_8_devices_match_unsharded(tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    out = json.loads(run_python(SHARDED, str(tmp_path / "c.toml"), str(tmp_path)).splitlines()[-1])
    assert out["devices"] == 8
    for a, b in zip(out["sharded"], out["single"], strict=True):
        assert a["seed"] == b["seed"]
        for key in ("loss", "val_loss", "kl"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)


def test_two_processes_match_one(tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    from formal_lm.training.distributed import launch_local
    gathered = launch_local(tmp_path / "c.toml", tmp_path / "multi", 2, timeout_s=TIMEOUT,
                            extra_env={"PYTHONPATH": str(ROOT)})
    from formal_lm.training import load_config, train
    single = train(load_config(tmp_path / "c.toml"), tmp_path / "single", progress=False).final
    assert [m["seed"] for m in gathered["final"]] == [0, 1, 2, 3]
    for a, b in zip(gathered["final"], single, strict=True):
        for key in ("loss", "val_loss", "kl"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
    def read(run):
        return [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    merged, ref = read("multi"), read("single")
    assert [(m["step"], m["seed"]) for m in merged] == [(m["step"], m["seed"]) for m in ref]
    for a, b in zip(merged, ref):
        np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-5)
    # the merged checkpoints have a single-process run's layout: load_models reads them
    from formal_lm.training import load_models
    for which in ("best", "last"):
        multi, one = load_models(tmp_path / "multi", which), load_models(tmp_path / "single", which)
        ids = np.array([[1, 3, 3, 4, 4, 2]], np.int32)
        assert len(multi) == len(one) == 4
        for m1, m2 in zip(multi, one):
            np.testing.assert_allclose(np.asarray(m1(ids)), np.asarray(m2(ids)), rtol=1e-4,
                                       atol=1e-5)


def test_cli_cpu_devices_trains_on_two_devices(tmp_path):
    """formal-lm train --cpu-devices 2: 3 seeds on a (1 seed x 2 rows) mesh, same losses as the
    same config on one device."""
    (tmp_path / "c.toml").write_text(CONFIG.replace("seeds = 4", "seeds = 3"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    runs = {}
    for n in ("1", "2"):
        cmd = [sys.executable, "-m", "formal_lm.cli", "train", str(tmp_path / "c.toml"),
               "--out", str(tmp_path / n), "--cpu-devices", n]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"on {n} cpu device(s)" in out.stdout
        runs[n] = [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(runs["1"], runs["2"], strict=True):
        for key in ("loss", "val_loss", "kl"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)

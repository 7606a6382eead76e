"""The training benchmarks run (at the small CPU shape) and their profile reads the trace right."""
from __future__ import annotations

import math
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import bench_training as bt  # noqa: E402
import profile_step as ps  # noqa: E402


@pytest.mark.parametrize("op_name, expected", [
    ("jit(_packed_local)/while/body/closed_call/while/body/transpose(jvp(mlp))/dot_general", "mlp"),
    ("jit(step)/while/body/attention/scores/exp", "scores"),
    ("jit(step)/transpose(jvp(attention))/project/dot_general", "project"),
    ("jit(step)/attention/reshape", "attention"),
    ("jit(step)/optimizer/add", "optimizer"),
    ("jit(step)/while/body/dynamic_slice", "unlabelled"),
    ("jit(step)/mlp_like/add", "unlabelled"),  # a scope is a whole word, not a prefix
])
def test_component_is_the_innermost_known_scope(op_name, expected):
    assert ps.component(op_name) == expected


def test_exclusive_time_subtracts_nested_ops_on_the_same_thread():
    ops = [("t0", "while", 0, 100, 100), ("t0", "a", 10, 30, 20), ("t0", "b", 40, 90, 50),
           ("t0", "c", 95, 120, 25),  # starts inside "while" but ends after it: not nested
           ("t1", "d", 20, 60, 40)]   # another thread: never nested in t0's ops
    got = {name: ns for _, name, ns in ps.exclusive(ops)}
    assert got == {"while": 30, "a": 20, "b": 50, "c": 25, "d": 40}


def test_op_components_reads_the_compiled_modules_scopes():
    def f(x):
        with jax.named_scope("mlp"):
            y = jnp.tanh(x @ x)
        with jax.named_scope("norm"):
            return y / jnp.linalg.norm(y)
    text = jax.jit(f).lower(jnp.ones((8, 8))).compile().as_text()
    comps = set(ps.op_components(text).values())
    assert {"mlp", "norm"} <= comps


def test_overlap_counts_time_with_one_and_with_two_threads_busy():
    ops = [("t0", "while", 0, 100, 100), ("t0", "a", 10, 30, 20),  # nested: t0 busy 0..100
           ("t0", "b", 150, 160, 10),
           ("t1", "c", 90, 120, 30), ("t1", "d", 200, 210, 10)]
    assert ps.overlap(ops) == (100 + 20 + 10 + 10, 10)


@pytest.fixture(scope="module")
def small_step():
    return bt.Ours("cpu", 1)


def test_profile_of_the_small_step_accounts_for_its_components(small_step):
    prof = ps.profile(small_step, 2)
    assert {"mlp", "scores", "optimizer"} <= set(prof["ms"])
    inside = sum(prof["ms"].values())
    assert 0 < inside <= prof["wall_s"] * 1e3 * prof["threads"]
    assert all(prof["ops"][c] > 0 and prof["median_us"][c] >= 0 for c in prof["ms"])
    one, two = prof["busy_share"]
    assert 0 < one <= 1.01 and 0 <= two <= one


def test_real_tokens_are_the_batchs_targets_after_packing(small_step):
    spec = bt.SHAPES["cpu"]
    ids = bt.anbn_batch(1, spec["B"], spec["T"], seed=0)[0]  # the step's first batch, seed 0
    assert ps.real_tokens(small_step) == int((ids[:, 1:] != bt.PAD_ID).sum())


def test_floors_measure_every_form(small_step):
    floor = ps.mlp_floor(300, 4, 16, tiles=(None, 128))
    assert set(floor) == {"whole", "tiles of 128"} and all(v > 0 for v in floor.values())
    att = ps.attention_floor(small_step, blocks=(32,))
    assert set(att) == {"loop, blocks of 32", "whole, blocks of 32", "best per row length"}
    assert att["best per row length"] == min(att["loop, blocks of 32"],
                                             att["whole, blocks of 32"])


def test_bench_training_reports_a_ratio_against_the_in_run_reference():
    summary = bt.main(["--shape", "cpu", "--seeds", "1", "--steps", "1", "--rounds", "1"])
    (row,) = summary
    assert row["K"] == 1 and math.isfinite(row["ratio"]) and row["ratio"] > 0
    assert row["mib_per_seed"] > 0


def test_profile_step_main_compares_floors_with_the_in_run_reference():
    out = ps.main(["--shape", "cpu", "--steps", "1"])
    assert set(out["reference_s"]) == {"model", "full"}
    assert all(r > 0 for r in out["reference_s"].values())
    assert 0 < out["floors_s"] and 0 < out["seed_step_s"]
    assert {"mlp", "scores"} <= set(out["profile"]["ms"])

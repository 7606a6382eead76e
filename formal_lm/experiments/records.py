"""Per-seed records of an experiment: typed analysis results, flattened only when written.

A :class:`SeedRecord` holds, for one seed of one group, the analyzers' result objects by label
(``"saturation"``, ``"rule_extrapolation.heldout"``, ...). Their ``measures()`` carry each
number's unit and direction; a measure is addressed as ``"label.name"`` (or by its bare name
when only one analysis reports it). CSV and JSON are written from these here and nowhere else.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from formal_lm.analysis import compare_groups
from formal_lm.analysis import measures as M
from formal_lm.experiments.spec import Statistics


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Which checkpoint a seed's analyses read, and its training metrics there."""

    rule: str  # "best" or "last"
    step: int | None
    val_loss: float | None
    val_kl: float | None
    val_floor: float | None  # exact NLL of the validation strings: val_loss's floor on them
    saturated_at: int | None = None  # the step saturation-aware stopping froze the seed at

    @classmethod
    def of(cls, rule: str, result, k: int) -> "Checkpoint":
        """Seed ``k``'s selected checkpoint of a ``TrainResult`` (its metrics line there)."""
        line = (result.best if rule == "best" else result.final)[k] or {}
        at = result.saturated_at[k] if result.saturated_at else None
        return cls(rule, line.get("step"), line.get("val_loss"), line.get("kl"),
                   line.get("val_optimal_loss"), at)

    def measures(self) -> tuple[M.Measure, ...]:
        return (M.nats("val_loss", self.val_loss, M.IN_DISTRIBUTION, "validation loss per real "
                       "target token at the analysed checkpoint", headline=True),
                M.nats("val_floor", self.val_floor, M.REFERENCE, "exact NLL of the validation "
                       "strings per real target token: the floor of val_loss on this sample",
                       headline=True, higher_is_better=None),
                M.nats("val_kl", self.val_kl, M.IN_DISTRIBUTION, "exact KL per real target "
                       "token on the validation set at the analysed checkpoint"),
                M.count("step", self.step, f"step of the analysed ({self.rule}) checkpoint"),
                M.Measure("steps_to_saturation", self.saturated_at, "steps", False,
                          M.REFERENCE, "optimizer steps until the validation KL stayed below "
                          "stopping.kl (saturation-aware stopping)", headline=True))


@dataclasses.dataclass(frozen=True)
class SeedRecord:
    """One seed of one group: its analysis results by label."""

    group: str
    seed: int
    results: Mapping[str, Any]

    def measures(self) -> dict[str, M.Measure]:
        return {f"{label}.{m.name}": m for label, r in self.results.items()
                for m in r.measures()}

    def measure(self, key: str) -> M.Measure | None:
        ms = self.measures()
        if key in ms:
            return ms[key]
        hits = [m for k, m in ms.items() if k.endswith("." + key)]
        return hits[0] if len(hits) == 1 else None

    def value(self, key: str) -> float | None:
        m = self.measure(key)
        return None if m is None else m.value


def grouped(records: Sequence[SeedRecord]) -> dict[str, list[SeedRecord]]:
    """Records by group, groups in first-seen order."""
    out: dict[str, list[SeedRecord]] = {}
    for r in records:
        out.setdefault(r.group, []).append(r)
    return out


def keys_where(records: Sequence[SeedRecord], keep) -> list[str]:
    """Measure keys (in first-seen order) whose Measure satisfies ``keep``."""
    out: dict[str, None] = {}
    for r in records:
        out.update({k: None for k, m in r.measures().items() if keep(m)})
    return list(out)


def resolve_key(records: Sequence[SeedRecord], key: str) -> str:
    """The full "label.name" key that ``key`` names in these records."""
    full = keys_where(records, lambda m: True)
    if key in full:
        return key
    hits = [k for k in full if k.endswith("." + key)]
    if len(hits) != 1:
        from formal_lm.errors import FormalLMError, Problem
        raise FormalLMError(Problem(f"measure {key!r} is {'ambiguous' if hits else 'unknown'}"
                                    f" in these records", f"use one of {full}"))
    return hits[0]


@dataclasses.dataclass(frozen=True)
class Regime:
    """The seeds a study's claims are about: those saturated (exact KL below the threshold).

    Attributes:
        metric: the measure compared with the threshold (None: every seed is in).
        threshold: the saturation threshold, nats per token (None: every seed is in).
        inside, outside: the records in and out of the regime.
    """

    metric: str | None
    threshold: float | None
    inside: tuple[SeedRecord, ...]
    outside: tuple[SeedRecord, ...]

    def counts(self) -> dict[str, tuple[int, int]]:
        """{group: (seeds in the regime, seeds)}, groups in first-seen order."""
        everyone = grouped(list(self.inside) + list(self.outside))
        ins = grouped(self.inside)
        return {g: (len(ins.get(g, [])), len(rs)) for g, rs in everyone.items()}


def regime(records: Sequence[SeedRecord], stats: Statistics) -> Regime:
    """Splits the records by the saturation regime of ``stats``."""
    if stats.saturation is None or not stats.regime_metric:
        return Regime(None, None, tuple(records), ())
    key = resolve_key(records, stats.regime_metric)

    def saturated(r):
        v = r.value(key)
        return v is not None and v < stats.saturation

    return Regime(key, stats.saturation, tuple(r for r in records if saturated(r)),
                  tuple(r for r in records if not saturated(r)))


def regime_json(reg: Regime) -> dict:
    """The regime as JSON: its rule and which (group, seed) are in and out."""
    return {"metric": reg.metric, "threshold": reg.threshold,
            "in_regime": [[r.group, r.seed] for r in reg.inside],
            "left_out": [[r.group, r.seed] for r in reg.outside]}


def compare(records: Sequence[SeedRecord], stats: Statistics, *, seed: int,
            tested: Sequence[str] | None = None):
    """``analysis.compare_groups`` of the groups of ``records`` (pass the regime's ``inside``):
    loss equivalence at the margin, and a difference test of each ``tested`` key (default:
    every measure marked ``tested`` that every seed has). Groups with fewer than 2 seeds are
    left out (the report says so); None when fewer than 2 groups remain or nothing is tested."""
    counts = {g: len(rs) for g, rs in grouped(records).items()}
    records = [r for r in records if counts[r.group] >= 2]
    if len({r.group for r in records}) < 2:
        return None
    loss = resolve_key(records, stats.loss_metric)
    if tested is None:
        tested = [k for k in keys_where(records, lambda m: m.tested)
                  if all(r.value(k) is not None for r in records)]
    tested = list(tested)
    if not tested:
        return None
    groups = {g: {k: [v for r in rs if (v := r.value(k)) is not None] for k in [loss] + tested}
              for g, rs in grouped(records).items()}
    percent = [k for k in tested if records[0].measure(k) and records[0].measure(k).percent]
    return compare_groups(groups, loss_metric=loss, ood_metrics=tested, margin=stats.margin,
                          alpha=stats.alpha, seed=seed, percent_metrics=percent)


def jsonable(x):
    """``x`` as strict JSON values (dataclasses as dicts, non-finite floats as None)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)
                if f.repr}
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(obj, path: Path) -> None:
    Path(path).write_text(json.dumps(jsonable(obj), indent=1, allow_nan=False))


def write_csv(records: Sequence[SeedRecord], path: Path) -> None:
    """One row per seed: group, seed, then every measure (blank where undefined)."""
    keys = keys_where(records, lambda m: True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "seed"] + keys)
        for r in records:
            ms = r.measures()
            w.writerow([r.group, r.seed] + [_cell(ms.get(k)) for k in keys])


def _cell(m: M.Measure | None):
    if m is None or m.value is None:
        return ""
    return int(m.value) if m.unit == "count" and m.value.is_integer() else m.value


def records_json(records: Sequence[SeedRecord]) -> list[dict]:
    """Records as JSON: group, seed, and per label the result's fields and measures."""
    return [{"group": r.group, "seed": r.seed,
             "results": {label: {"measures": {m.name: m.value for m in res.measures()},
                                 "detail": jsonable(res)} for label, res in r.results.items()}}
            for r in records]

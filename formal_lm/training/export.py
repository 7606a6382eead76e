"""``formal-lm export RUN_DIR --out FOLDER``: the exact data a run trained and was judged on.

The data of a run is a pure function of its config (``derive(seed, Stream.TRAIN, step)`` for the
batch of seed s at step t, the shared VAL and TEST streams for the held-out sets), so it is
rebuilt from the config recorded in ``RUN_DIR/run.json`` rather than stored. Before anything is
written the rebuilt data's identity (the language's name and fingerprint, a hash of the
validation strings with their exact next-token rows, the prompt split) is compared with the
recorded one: a grammar that changed since the run trained is refused, since its data would not
be what the run saw.

Files written (one JSON object per line):

- ``train-seed{S}.jsonl``: per optimizer step t = 0, 1, ... of the run's last checkpoint,
  ``{"step": t, "strings": [[symbol, ...], ...]}`` in batch order (with a completion objective
  also ``"completions": [{"prompt": [...], "completion": [...]}, ...]``, that step's OOD batch);
- ``validation.jsonl`` and ``test.jsonl``: ``{"string": [...], "length": n, "log_prob": ln p}``
  (ln p under the distribution they were drawn from);
- ``README.txt``: how all of it was drawn.
"""
from __future__ import annotations

import json
from pathlib import Path

from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import Stream
from formal_lm.training import checkpoint as ckpt
from formal_lm.training import objectives
from formal_lm.training.config import TrainConfig, config_from_dict
from formal_lm.training.data import LanguageData, held_out
from formal_lm.training.loop import RUN_FILE


def _recorded(run_dir: Path) -> dict:
    """The identity a run recorded (``run.json``): config, data and start."""
    path = run_dir / RUN_FILE
    try:
        identity = json.loads(path.read_text())
    except FileNotFoundError:
        raise FormalLMError(Problem(f"{run_dir} holds no run: {path} does not exist",
                                    "give the --out folder of a formal-lm train run")) from None
    except (OSError, ValueError) as e:
        raise FormalLMError(Problem(f"cannot read {path}: {e}",
                                    "the run's record is damaged: retrain it")) from None
    if not isinstance(identity, dict) or not isinstance(identity.get("config"), dict):
        raise FormalLMError(Problem(f"{path} is not a run record (no config in it)",
                                    "give the --out folder of a formal-lm train run"))
    return identity


def rebuild(run_dir: str | Path) -> tuple[TrainConfig, LanguageData, dict]:
    """(config, data, recorded identity) of a run, its data rebuilt from the recorded config.

    Raises:
        FormalLMError: no readable run, a run whose data did not come from a language, or a
            language that no longer matches the run's recorded identity.
    """
    run_dir = Path(run_dir)
    identity = _recorded(run_dir)
    where = str(run_dir / RUN_FILE)
    recorded = identity.get("data") or {}
    if recorded.get("kind") != "language" or identity["config"].get("language") is None:
        raise FormalLMError(Problem(f"{where}: the run did not train on samples of a grammar "
                                    "(its data came from elsewhere), so there is nothing to "
                                    "rebuild", "export runs of formal-lm train"))
    cfg = config_from_dict(identity["config"], source=where)
    from formal_lm.grammar_files import load
    try:
        lang = load(cfg.language)
    except FormalLMError as e:
        raise FormalLMError([Problem(
            f"{where}: the run's language {cfg.language!r} cannot be loaded (a language built in "
            "Python is recorded by its name only; a relative path is read from the folder the "
            "run was trained in)", "run export from that folder, with the grammar in place")]
            + e.problems) from None
    split = None
    if cfg.objective.name in objectives.COMPLETION_OBJECTIVES:
        split = objectives.read_split(run_dir)
    data = LanguageData(lang, cfg.data, cfg.batch_size, cfg.objective, split)
    now = json.loads(json.dumps(data.identity()))
    changed = [k for k in recorded if recorded[k] != now.get(k)]
    if changed:
        raise FormalLMError(Problem(
            f"{where}: the run trained on {recorded.get('language')!r} as it was then, and the "
            f"grammar {cfg.language!r} no longer matches it ({', '.join(changed)} differ; "
            f"fingerprint recorded {recorded.get('fingerprint')}, now {now.get('fingerprint')})",
            "restore the grammar the run trained on, or retrain the run"))
    return cfg, data, identity


def _steps(run_dir: Path) -> tuple[int, list]:
    """(steps the run's last checkpoint holds, the step at which each seed saturated)."""
    last = run_dir / "checkpoints" / "last.msgpack"
    if not last.exists():
        return 0, []
    meta, _ = ckpt.read(last)
    return int(meta.get("step", 0)), list(meta.get("saturated_at") or [])


def _completions(data: LanguageData, seed: int, step: int) -> list[dict] | None:
    """The OOD batch of a completion objective at ``step`` as prompts and their completions."""
    batch = data.ood_batch(seed, step)
    if batch is None:
        return None
    out = []
    for row, weights in zip(*batch):
        syms = list(data.lang.vocab.decode(row))
        first = int(weights.argmax())  # target t is symbol t of the string (or its EOS)
        out.append({"prompt": syms[:first], "completion": syms[first:]})
    return out


def _write_lines(path: Path, objects) -> int:
    n = 0
    with open(path, "w") as f:
        for obj in objects:
            f.write(json.dumps(obj) + "\n")
            n += 1
    return n


def _held_out_lines(data: LanguageData, stream: Stream):
    for s in held_out(data.lang, data.data, stream):
        yield {"string": list(s), "length": len(s), "log_prob": data.target.log_prob(s)}


def export(run_dir: str | Path, out: str | Path) -> dict[str, int]:
    """Writes the data of the run in ``run_dir`` into ``out`` (see the module docstring);
    returns {file name: lines written}.

    Raises:
        FormalLMError: as :func:`rebuild`, or ``out`` is a file or a folder that is not empty.
    """
    run_dir, out = Path(run_dir), Path(out)
    cfg, data, identity = rebuild(run_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FormalLMError(Problem(f"--out {str(out)!r} exists and is not an empty folder",
                                    "give a new folder"))
    steps, saturated = _steps(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed in cfg.seeds:
        lines = ({"step": t, "strings": [list(s) for s in data.train_strings(seed, t)],
                  **({"completions": c} if (c := _completions(data, seed, t)) else {})}
                 for t in range(steps))
        written[f"train-seed{seed}.jsonl"] = _write_lines(out / f"train-seed{seed}.jsonl", lines)
    for name, stream in (("validation.jsonl", Stream.VAL), ("test.jsonl", Stream.TEST)):
        written[name] = _write_lines(out / name, _held_out_lines(data, stream))
    (out / "README.txt").write_text(readme(run_dir, cfg, data, identity, steps, saturated))
    written["README.txt"] = 1
    return written


def readme(run_dir: Path, cfg: TrainConfig, data: LanguageData, identity: dict, steps: int,
           saturated: list) -> str:
    """How the exported data was drawn, in words."""
    d = cfg.data
    lang = data.lang
    if d.lo is not None:
        source = (f"the language conditioned on lengths {d.lo}..{d.hi} "
                  f"({data.target.name}: lengths drawn from its length distribution, then exact "
                  "samples of each length)")
    else:
        source = (f"exact samples of the language (a string longer than {d.max_length - 2} "
                  "symbols is redrawn)")
    train = {"fresh": f"fresh exact samples every step: {source}",
             "length_range": f"fresh samples every step from {source}",
             "fixed": (f"one fixed data set per seed, every item once per epoch in an order drawn "
                       f"per epoch: {d.per_length} sample(s) of every length {d.lo}..{d.hi} with "
                       "mass" if d.per_length is not None else
                       f"one fixed data set of {d.dataset_size} strings per seed, every item once "
                       f"per epoch in an order drawn per epoch, from {source}")}[d.mode]
    frozen = [f"seed {s}: step {t}" for s, t in zip(cfg.seeds, saturated) if t is not None]
    lines = [
        f"Data of the run in {run_dir} (formal-lm export), rebuilt from its recorded config",
        f"({RUN_FILE}) and checked against its recorded identity.", "",
        f"language: {lang.name} (fingerprint {lang.fingerprint()}), alphabet "
        f"{' '.join(lang.alphabet)}",
        f"data: mode={d.mode}, batch_size={cfg.batch_size}, max_length={d.max_length} tokens"
        + (f", lengths {d.lo}..{d.hi}" if d.lo is not None else ""),
        f"seeds: {list(cfg.seeds)}; steps trained (last checkpoint): {steps} of {cfg.steps}", "",
        f"train-seed{{S}}.jsonl: the batch of every optimizer step 0..{steps - 1}, in order, "
        f"one line per step. Training data: {train}. The batch of seed S at step t is drawn with "
        "formal_lm.seeding.derive(S, Stream.TRAIN, ...), so it does not depend on other seeds "
        "or on interruptions.",
        "validation.jsonl: the validation set every seed is evaluated on (val_loss, kl), "
        f"{d.eval_size} strings from the VAL stream (seed 0), drawn from {source}; log_prob "
        f"is exact ln p under {data.target.name}.",
        f"test.jsonl: {d.eval_size} strings from the TEST stream, drawn the same way (the run "
        "itself never reads them).",
    ]
    if frozen:
        lines.append("Saturated seeds (parameters frozen from then on; their batches are still "
                     "listed): " + ", ".join(frozen) + ".")
    if data.split is not None:
        lines.append(f"Objective {cfg.objective.name!r}: each step's OOD completion batch is "
                     "listed under 'completions' (prompts from the train half of "
                     f"{objectives.SPLIT_FILE}).")
    return "\n".join(lines) + "\n"

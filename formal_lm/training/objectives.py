"""Completion objectives on out-of-distribution prompts, for any language with named rules.

Reizinger et al. (ICML 2024, case study 1) add to the next-token loss a loss on completions of
out-of-distribution (OOD) prompts, to show that equal in-distribution loss allows any OOD
behaviour. Here the prompts and the completions they teach come from the language itself:

- **Prompts**: every string of ``prompt_length`` symbols that the language cannot complete
  (``not lang.is_viable(p)``) but whose headline rule (the language's first rule) still can be
  satisfied (``rules[0].can_complete(p)``), in alphabet order. They are split once by a seeded
  permutation (``derive(split_seed, Stream.OOD_SPLIT)``) into a training half (the first
  ``floor(n / 2)``) and a held-out half that the analyses evaluate on. The split is written to
  ``RUN_DIR/ood_split.json`` and read back from there by the analyses.
- **"extrapolation"** teaches the shortest completion ``c`` (then EOS) such that ``p + c``
  satisfies the headline rule; among completions of equal length the first in alphabet order.
  On a^n b^n (R1 "#a = #b", R2 "a before b") that is ``m^k`` for the minority symbol ``m`` and
  ``k = |#a - #b|``: the oracle completion of the paper, which keeps R1 (R2 is broken already).
- **"adversarial"** teaches the extrapolation completion overshot by one symbol: its last symbol
  repeated (the first alphabet symbol when it is empty) if that breaks the headline rule, else
  the first symbol in alphabet order that does. On a^n b^n that is ``m^(k+1)`` (``a`` for a
  balanced prompt): every completed string breaks R1.

A prompt for which the search finds no completion within ``MAX_COMPLETION`` symbols (or
``MAX_NODES`` candidates) is an error that names it. The search is breadth-first over
completions, pruned by the headline rule's ``can_complete``, so its cost grows as
|alphabet| ** len(completion).

The completion loss scores only completion tokens (the first one included, EOS included, PAD
excluded), averaged over completion tokens, and is added to the NLL with ``objective.weight``.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.seeding import Stream, rng
from formal_lm.vocab import PAD_ID

COMPLETION_OBJECTIVES = ("extrapolation", "adversarial")
MAX_PROMPTS = 1 << 16  # alphabet ** prompt_length strings are enumerated; refuse beyond this
MAX_COMPLETION = 64
MAX_NODES = 200_000

String = tuple[str, ...]


def ood_prompts(lang, prompt_length: int) -> list[String]:
    """Every prompt of ``prompt_length`` symbols that the language cannot complete but whose
    headline rule still can be satisfied (in alphabet order)."""
    if not lang.rules:
        raise FormalLMError(Problem(f"language {lang.name!r} has no named rules, so a completion "
                                    "objective has nothing to keep or break",
                                    "use objective.name = 'nll', or give the grammar [rules.*]"))
    total = len(lang.alphabet) ** prompt_length
    if total > MAX_PROMPTS:
        raise FormalLMError(Problem(
            f"prompt_length={prompt_length} gives {total} prompts over {len(lang.alphabet)} "
            f"symbols, more than the {MAX_PROMPTS} this objective enumerates",
            "use a shorter objective.prompt_length"))
    head = lang.rules[0]
    return [p for p in itertools.product(lang.alphabet, repeat=prompt_length)
            if not lang.is_viable(p) and head.can_complete(p)]


def ood_split(lang, prompt_length: int = 8, split_seed: int = 0) -> dict[str, list[String]]:
    """{"train": [...], "heldout": [...]}: the fixed seeded split of :func:`ood_prompts`."""
    prompts = ood_prompts(lang, prompt_length)
    perm = rng(split_seed, Stream.OOD_SPLIT).permutation(len(prompts))
    half = len(prompts) // 2
    return {"train": [prompts[i] for i in sorted(perm[:half])],
            "heldout": [prompts[i] for i in sorted(perm[half:])]}


def _shortest(alphabet, prompt: String, ok, viable) -> String:
    """The shortest ``c`` (alphabet order among equals) with ``ok(prompt + c)``, pruning
    extensions that are not ``viable``; an error when the search budget runs out."""
    frontier, seen = [()], 0
    for _ in range(MAX_COMPLETION + 1):
        for c in frontier:
            if ok(prompt + c):
                return c
        seen += len(frontier)
        frontier = [c + (x,) for c in frontier for x in alphabet if viable(prompt + c + (x,))]
        if not frontier or seen + len(frontier) > MAX_NODES:
            break
    raise FormalLMError(Problem(
        f"no completion of prompt {''.join(prompt)!r} within {MAX_COMPLETION} symbols or "
        f"{MAX_NODES} candidates satisfies the headline rule",
        "use a language whose rules can be completed quickly, or objective.name = 'nll'"))


def completion(lang, prompt, objective: str) -> String:
    """The completion (symbols, EOS excluded) that ``objective`` teaches after ``prompt``."""
    prompt, head = tuple(prompt), lang.rules[0]
    c = _shortest(lang.alphabet, prompt, head.holds, head.can_complete)
    if objective == "extrapolation":
        return c
    if objective != "adversarial":
        raise FormalLMError(Problem(f"objective={objective!r} has no completion",
                                    f"use one of {COMPLETION_OBJECTIVES}"))
    first = c[-1] if c else lang.alphabet[0]
    for x in (first,) + tuple(lang.alphabet):
        if not head.holds(prompt + c + (x,)):
            return c + (x,)
    raise FormalLMError(Problem(
        f"no one-symbol overshoot of {''.join(prompt + c)!r} breaks rule {head.name}",
        "the adversarial objective needs a headline rule that one more symbol can break"))


def completion_batch(lang, prompts, objective: str, length: int | None = None):
    """(ids int32 [N, T], weights float32 [N, T-1]) of prompt + completion + EOS.

    ``weights[i, t]`` is 1 where target ``ids[i, t+1]`` is a completion token (EOS included).
    """
    strings = [tuple(p) + completion(lang, p, objective) for p in prompts]
    ids = lang.vocab.batch(strings, length=length)
    weights = np.zeros((len(prompts), ids.shape[1] - 1), np.float32)
    for i, p in enumerate(prompts):
        weights[i, len(p):] = 1.0  # target ids[:, len(p)+1] is the first completion token
    weights *= ids[:, 1:] != PAD_ID
    return ids, weights


SPLIT_FILE = "ood_split.json"


def split_text(split: dict, prompt_length: int, split_seed: int) -> str:
    """The split as the JSON text stored with a run (``RUN_DIR/ood_split.json``)."""
    data = {"prompt_length": prompt_length, "split_seed": split_seed,
            "train": [list(p) for p in split["train"]],
            "heldout": [list(p) for p in split["heldout"]]}
    return json.dumps(data, indent=1)


def read_split(run_dir: Path) -> dict[str, list[String]]:
    """The split a run trained with, as tuples of symbols."""
    path = Path(run_dir) / SPLIT_FILE
    try:
        data = json.loads(path.read_text())
        return {k: [tuple(p) for p in data[k]] for k in ("train", "heldout")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FormalLMError(Problem(f"cannot read the OOD split {path}: {e}",
                                    "retrain the run (its split file is missing or damaged)")
                            ) from None

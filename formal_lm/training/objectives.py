"""Completion objectives on out-of-distribution prompts (Reizinger et al., ICML 2024, case 1).

On a^n b^n (rules R1 "#a == #b" and R2 "every a before every b"), the OOD prompts are all
strings of ``prompt_length`` symbols over {a, b} that cannot be completed into the language:
for length 8 that is 256 - 5 = 251 prompts (247 break R2; a^k b^(8-k) for k < 4 break only R1).
They are split by a fixed seeded permutation into a training half (first floor(251/2) = 125) and
a held-out half (126) that the analyzers evaluate on; the split is exported to
``RUN_DIR/ood_split.json``.

Completion targets (the prompt is ``p``, m = the minority symbol of p, k = |#a - #b|):

- "extrapolation": the oracle completion m^k then EOS, which restores R1 (the rule that can
  still hold); a balanced prompt is completed by EOS alone.
- "adversarial": m^(k+1) then EOS: one symbol past balance, so the completed string breaks R1 as
  well. A balanced prompt (k = 0) gets "a" then EOS.

The completion loss scores only completion tokens (the first one included, EOS included, PAD
excluded), averaged over completion tokens, and is added to the NLL with ``objective.weight``.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from formal_lm.errors import FormalLMError, Problem
from formal_lm.vocab import PAD_ID


def ood_prompts(lang, prompt_length: int) -> list[tuple[str, ...]]:
    """Every prompt of ``prompt_length`` symbols that the language cannot complete (sorted)."""
    _check(lang)
    return [p for p in itertools.product(lang.alphabet, repeat=prompt_length)
            if not lang.is_viable(p)]


def _check(lang):
    if len(lang.alphabet) != 2:
        raise FormalLMError(Problem(
            f"the OOD completion objectives need a two-symbol a^n b^n-like language; "
            f"{lang.name!r} has alphabet {lang.alphabet}", "use objective.name='nll'"))


def ood_split(lang, prompt_length: int = 8, split_seed: int = 0) -> dict[str, list]:
    """{"train": [...], "heldout": [...]}: the fixed seeded split of :func:`ood_prompts`."""
    prompts = ood_prompts(lang, prompt_length)
    perm = np.random.default_rng(split_seed).permutation(len(prompts))
    half = len(prompts) // 2
    return {"train": [prompts[i] for i in sorted(perm[:half])],
            "heldout": [prompts[i] for i in sorted(perm[half:])]}


def completion(lang, prompt, objective: str) -> tuple[str, ...]:
    """The target completion (symbols, EOS excluded) of an OOD prompt (module docstring)."""
    a, b = lang.alphabet
    na, nb = prompt.count(a), prompt.count(b)
    minority = a if na < nb else b
    k = abs(na - nb)
    if objective == "extrapolation":
        return (minority,) * k
    if objective == "adversarial":
        return (minority,) * (k + 1) if k else (a,)
    raise FormalLMError(f"objective={objective!r} has no completion; use extrapolation/adversarial")


def completion_batch(lang, prompts, objective: str, length: int | None = None):
    """(ids int32 [N, T], mask float32 [N, T-1]) of prompt + completion + EOS.

    ``mask[i, t]`` is 1 where target ``ids[i, t+1]`` is a completion token (EOS included).
    """
    strings = [tuple(p) + completion(lang, p, objective) for p in prompts]
    ids = lang.vocab.batch(strings, length=length)
    mask = np.zeros((len(prompts), ids.shape[1] - 1), np.float32)
    for i, p in enumerate(prompts):
        mask[i, len(p):] = 1.0  # target ids[:, len(p)+1] is the first completion token
    mask *= ids[:, 1:] != PAD_ID
    return ids, mask


def write_split(run_dir: Path, split: dict, objective: str, prompt_length: int, split_seed: int):
    data = {"objective": objective, "prompt_length": prompt_length, "split_seed": split_seed,
            "train": ["".join(p) for p in split["train"]],
            "heldout": ["".join(p) for p in split["heldout"]]}
    (Path(run_dir) / "ood_split.json").write_text(json.dumps(data, indent=1))

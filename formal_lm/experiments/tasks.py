"""Supervised-task experiments (``kind = "tasks"``): transducers as in Deletang et al. (ICLR
2023) and recognizers as in Butoi et al. (2024), every model on every task, on the one training
loop.

File layout (besides the common tables, see ``spec``)::

    [lengths]
    train = [1, 40]          # training inputs have lengths drawn uniformly from this range
    test = [41, 100]         # tested at every length of this range ([full] may raise it to 500)
    test_step = 1            # ... or every test_step-th length
    per_length = 16          # test examples per length (recognizers: half members)

    [tasks.reverse]          # one table per task
    transduction = "reverse_string"      # a task of formal_lm.tasks.transduction
    [tasks.anbn]
    recognize = "anbn"                   # a grammar name or path
    negatives = "uniform"                # "uniform" | "near_miss" | "both" (training negatives)
    lm_weight = 0.0                      # > 0: language-modelling auxiliary on members
    ns_weight = 0.0                      # > 0: next-symbol-set auxiliary on members

Each (task, model) trains its seeds into ``OUT/runs/<task>.<model>/``. Every seed is scored on
fresh examples of every tested length (and of the training range, in distribution) from
``derive(eval_seed, Stream.TASK, ...)``: a transducer by per-token accuracy of its answers (the
argmax over output symbols), a recognizer by accuracy per kind of example and length bin with
its baselines (``analysis.recognition``).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import numpy as np

from formal_lm.analysis import measures as M
from formal_lm.analysis.predictor import JaxModel, call_model
from formal_lm.analysis.recognition import recognition_accuracy
from formal_lm.errors import FormalLMError
from formal_lm.experiments.spec import Checker, resolve_language
from formal_lm.grammar_files import load
from formal_lm.seeding import Stream, derive
from formal_lm.tasks import recognition as rec
from formal_lm.tasks import transduction as trd
from formal_lm.tasks.data import TaskData
from formal_lm.tasks.draws import recognition_draw, transduction_draw
from formal_lm.tasks.encoding import TaskVocab, answers, encode, width

TASK_KEYS = {"transduction", "recognize", "negatives", "lm_weight", "ns_weight"}
LENGTH_KEYS = {"train", "test", "test_step", "per_length"}
NEGATIVES = ("uniform", "near_miss", "both")


@dataclasses.dataclass(frozen=True)
class Lengths:
    train: tuple[int, int]
    test: tuple[int, int]
    test_step: int = 1
    per_length: int = 16

    def tested(self) -> list[int]:
        return list(range(self.test[0], self.test[1] + 1, self.test_step))


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the file: a transduction task, or recognition of a language."""

    key: str
    transduction: str | None = None
    language: str | None = None  # resolved grammar name or path (recognizers)
    negatives: str = "uniform"
    lm_weight: float = 0.0
    ns_weight: float = 0.0

    @property
    def kind(self) -> str:
        return "transduction" if self.transduction else "recognition"

    @functools.cached_property
    def lang(self):
        """The recognized language, loaded once per task (its samplers' caches live on it);
        None for a transduction task."""
        return load(self.language) if self.language else None

    def vocab(self) -> TaskVocab:
        if self.transduction:
            return trd.task(self.transduction).vocab
        return rec.vocab(self.lang)

    def chomsky(self) -> str:
        return trd.task(self.transduction).chomsky if self.transduction else "-"

    def max_tokens(self, longest: int) -> int:
        """The widest example of inputs up to ``longest`` symbols."""
        if self.transduction:
            t = trd.task(self.transduction)
            return max(width(n, t.output_length(n)) for n in range(1, longest + 1))
        return width(longest + 1, 1)  # a near miss may be one symbol longer


@dataclasses.dataclass(frozen=True)
class Tasks:
    """The kind's own part of the experiment: its tasks and lengths."""

    tasks: Mapping[str, Task]
    lengths: Lengths


def _pair(v, name, chk: Checker):
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                   and x >= 1 for x in v) and v[0] <= v[1]:
        return (v[0], v[1])
    chk.bad(f"lengths.{name}={v!r} must be [lo, hi] with 1 <= lo <= hi")
    return (1, 1)


def _int(v, name, chk: Checker, default: int) -> int:
    if v is None:
        return default
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
        return v
    chk.bad(f"{name}={v!r} must be an integer >= 1")
    return default


def tasks_study(d: Mapping, chk: Checker) -> Tasks:
    """The [lengths] and [tasks.*] tables, every key checked."""
    lt = chk.keys(d.get("lengths", {}), LENGTH_KEYS, "lengths")
    train = _pair(lt.get("train", [1, 40]), "train", chk)
    test = _pair(lt.get("test", [41, 100]), "test", chk)
    lengths = Lengths(train, test, _int(lt.get("test_step"), "lengths.test_step", chk, 1),
                      _int(lt.get("per_length"), "lengths.per_length", chk, 16))
    tasks = {}
    table = d.get("tasks", {})
    if not isinstance(table, Mapping) or not table:
        chk.bad("no [tasks.KEY] tables",
                "add e.g. [tasks.reverse] transduction = 'reverse_string'")
        table = {}
    for key, t in table.items():
        t = chk.keys(t, TASK_KEYS, f"tasks.{key}")
        if "." in key or ("transduction" in t) == ("recognize" in t):
            chk.bad(f"[tasks.{key}] needs exactly one of 'transduction' (a task name) or "
                    "'recognize' (a grammar), and a key without '.'",
                    f"transduction tasks: {sorted(trd.TASKS)}")
            continue
        if "transduction" in t:
            if t["transduction"] not in trd.TASKS:
                chk.bad(f"tasks.{key}.transduction={t['transduction']!r} is not a task",
                        f"use one of {sorted(trd.TASKS)}")
                continue
            extra = sorted(set(t) - {"transduction"})
            if extra:
                chk.bad(f"tasks.{key}: {extra} are for recognizers", "remove them")
            tasks[key] = Task(key, transduction=t["transduction"])
            continue
        name = resolve_language(t["recognize"], chk.source) if isinstance(
            t["recognize"], str) else None
        try:
            load(name)
        except FormalLMError as e:
            chk.extend(e.problems, f"tasks.{key}.recognize")
            continue
        neg = t.get("negatives", "uniform")
        if neg not in NEGATIVES:
            chk.bad(f"tasks.{key}.negatives={neg!r} is not allowed", f"use one of {NEGATIVES}")
        w = {}
        for k in ("lm_weight", "ns_weight"):
            w[k] = t.get(k, 0.0)
            if isinstance(w[k], bool) or not isinstance(w[k], (int, float)) \
                    or not 0 <= w[k] < float("inf"):
                chk.bad(f"tasks.{key}.{k}={w[k]!r} must be a number >= 0")
                w[k] = 0.0
        tasks[key] = Task(key, language=name, negatives=neg, lm_weight=float(w["lm_weight"]),
                          ns_weight=float(w["ns_weight"]))
    return Tasks(tasks, lengths)


def task_data(task: Task, lengths: Lengths, batch_size: int, eval_size: int,
              bucket: int) -> TaskData:
    lo, hi = lengths.train
    if task.transduction:
        draw = transduction_draw(task.transduction, lo, hi)
        name = task.transduction
    else:
        draw = recognition_draw(task.lang, lo, hi, task.negatives)
        name = f"recognize {task.lang.name} ({task.negatives})"
    facts = {"train_lengths": list(lengths.train)}
    if task.language:
        facts["language"] = task.lang.fingerprint()
    return TaskData(name, task.vocab(), draw, batch_size, task.max_tokens(hi),
                    eval_size=eval_size, lm_weight=task.lm_weight, bucket=bucket, facts=facts,
                    language=task.lang,
                    next_symbol_weight=task.ns_weight)


# ------------------------------------------------------------------------------ scoring
def answer_accuracy(model, vocab: TaskVocab, examples) -> np.ndarray:
    """float [N]: per example, the share of its answer symbols the model gets right (argmax
    over the output symbols at each answer step). An answer padded after a terminal symbol
    ``=end`` (stack manipulation, binary addition and multiplication) is scored up to and
    including its first ``=end``, as Deletang et al. score it (the padding is trained on)."""
    if not len(examples):
        return np.zeros(0)
    ids, tgt = encode(vocab, list(examples))
    logits = call_model(model, ids[:, :-1], batch_size=64)  # [N, T-1, V]
    first = vocab.first_output
    right = answers(vocab, tgt, first + np.argmax(logits[..., first:], axis=-1))
    scored = tgt >= first
    if trd.END in vocab.outputs:
        is_end = tgt == vocab.vocab.id(trd.END)
        scored &= (np.cumsum(is_end, axis=1) - is_end) == 0  # nothing after the first =end
    return (right & scored).sum(1) / scored.sum(1)


@dataclasses.dataclass(frozen=True)
class TransductionScore:
    """Per-token accuracy of a transducer's answers, in distribution and per test length.

    ``ood`` is Deletang et al.'s score: the mean over the tested lengths of the per-token
    accuracy at each length.
    """

    in_distribution: float
    by_length: tuple[tuple[int, float], ...]

    @property
    def ood(self) -> float:
        return float(np.mean([a for _, a in self.by_length]))

    def measures(self) -> tuple[M.Measure, ...]:
        lo, hi = self.by_length[0][0], self.by_length[-1][0]
        return (M.fraction("acc_in", self.in_distribution, M.IN_DISTRIBUTION,
                           "per-token accuracy of the answers on training-range lengths",
                           headline=True),
                M.fraction("acc_ood", self.ood, M.OUT_OF_DISTRIBUTION,
                           f"per-token accuracy averaged over test lengths {lo}..{hi} "
                           "(Deletang et al.'s score)", headline=True, tested=True))


def _test_examples(task: Task, n: int, count: int, seed: int):
    """Test examples of length ``n``: a transduction task's list, or a recognizer's sets
    (uniform negatives, near misses; a kind that does not exist at ``n`` is left out)."""
    s = derive(seed, Stream.TASK, -3, n)
    if task.transduction:
        return trd.task(task.transduction).sample(n, count, s)
    lang = task.lang
    out = []
    for j, negative in enumerate(("uniform", "near_miss")):
        # each set its own seed: with one seed both sets held the same positives
        sj = s if j == 0 else derive(seed, Stream.TASK, -3, n, j)
        try:
            out.append(rec.examples(lang, [n], count, sj, negative=negative))
        except FormalLMError:  # no near misses / no non-members here: the other kind only
            continue
    return out


@dataclasses.dataclass(frozen=True)
class ScoringSets:
    """A task's scoring examples, drawn once from the eval seed and shared by every model and
    seed: ``in_range`` and ``by_length`` (test length -> examples; a recognizer's are its
    sets per kind), and for a recognizer the ``train`` examples its baselines are fitted on."""

    in_range: list
    by_length: tuple[tuple[int, list], ...]
    train: list = dataclasses.field(default_factory=list)


def scoring_sets(task: Task, lengths: Lengths, seed: int) -> ScoringSets:
    lo, hi = lengths.train
    per = lengths.per_length
    by = tuple((n, _test_examples(task, n, per, seed)) for n in lengths.tested())
    if task.transduction:
        ind = transduction_draw(task.transduction, lo, hi)(derive(seed, Stream.TASK, -2),
                                                           4 * per)
        return ScoringSets(ind, by)
    ind = [x for n in range(lo, hi + 1) for x in _test_examples(task, n, max(2, per // 4), seed)]
    train = recognition_draw(task.lang, lo, hi, task.negatives)(
        derive(seed, Stream.TASK, -4), 1024)
    return ScoringSets(ind, by, train)


def score_transducer(model, task: Task, tests: ScoringSets) -> TransductionScore:
    vocab = task.vocab()
    by = tuple((n, float(np.mean(answer_accuracy(model, vocab, xs))))
               for n, xs in tests.by_length)
    return TransductionScore(float(np.mean(answer_accuracy(model, vocab, tests.in_range))), by)


def score_recognizer(model, task: Task, lengths: Lengths, tests: ScoringSets) -> dict:
    """``analysis.recognition`` accuracy in the training range ("in") and at the tested
    lengths ("ood"), on members, uniform non-members and near misses, with the baselines
    fitted on training examples."""
    vocab = task.vocab()
    lo, hi = lengths.train
    train_lengths = [len(x) for x, _ in tests.train]
    train_labels = [y == rec.ACCEPT for _, y in tests.train]
    out = {}
    for label, sets, bins in (
            ("in", tests.in_range, [(max(0, lo - 1), hi + 1)]),
            ("ood", [s for _, ss in tests.by_length for s in ss], length_bins(lengths))):
        xs = [ex for s in sets for ex in s]
        right = answer_accuracy(model, vocab, xs) == 1.0
        labels = np.array([y == rec.ACCEPT for _, y in xs])
        out[label] = recognition_accuracy(
            [len(x) for x, _ in xs], labels, np.where(right, labels, ~labels),
            [k for s in sets for k in s.kinds], bins=bins, train_lengths=train_lengths,
            train_labels=train_labels, train_max_length=hi + 1 if label == "in" else hi,
            label="")
    return out


def length_bins(lengths: Lengths, n_bins: int = 4) -> list[tuple[int, int]]:
    """The test range cut into ``n_bins`` inclusive bins (a near miss of the longest tested
    length may be one longer)."""
    lo, hi = lengths.test
    edges = np.linspace(lo, hi + 1, n_bins + 1).astype(int)
    bins = [(int(a), int(b) - 1) for a, b in zip(edges[:-1], edges[1:]) if b - 1 >= a]
    return bins[:-1] + [(bins[-1][0], hi + 1)]


def score(model, task: Task, lengths: Lengths, tests: ScoringSets) -> dict:
    """A seed's results on its task's ``tests`` by label (typed, each with ``measures()``)."""
    if task.transduction:
        return {"task": score_transducer(JaxModel(model), task, tests)}
    return score_recognizer(JaxModel(model), task, lengths, tests)

"""Unambiguity: LL(1) and LR(1) checks (each sufficient), and a bounded search for a string with
two leftmost derivations."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from formal_lm.pcfg._normal_form import Production
from formal_lm.vocab import String


def is_ll1(prods: Sequence[Production], nonterminals, start: str,
           by_lhs: Mapping[str, Sequence[int]]) -> bool:
    """Sufficient for unambiguity: every nonterminal's alternatives have disjoint predict sets."""
    nts = set(nonterminals)
    nullable: set[str] = set()
    first: dict[str, set] = {A: set() for A in nts}

    def first_seq(seq):
        out = set()
        for x in seq:
            if x not in nts:
                out.add(x)
                return out, False
            out |= first[x]
            if x not in nullable:
                return out, False
        return out, True

    changed = True
    while changed:
        changed = False
        for lhs, rhs, _ in prods:
            f, nul = first_seq(rhs)
            if not f <= first[lhs]:
                first[lhs] |= f
                changed = True
            if nul and lhs not in nullable:
                nullable.add(lhs)
                changed = True
    end = object()
    follow: dict[str, set] = {A: set() for A in nts}
    follow[start].add(end)
    changed = True
    while changed:
        changed = False
        for lhs, rhs, _ in prods:
            for i, x in enumerate(rhs):
                if x in nts:
                    f, nul = first_seq(rhs[i + 1:])
                    new = f | (follow[lhs] if nul else set())
                    if not new <= follow[x]:
                        follow[x] |= new
                        changed = True
    for A, ks in by_lhs.items():
        seen: set = set()
        for k in ks:
            f, nul = first_seq(prods[k][1])
            pred = f | (follow[A] if nul else set())
            if pred & seen:
                return False
            seen |= pred
    return True


def find_ambiguity(prods: Sequence[Production], nonterminals, start: str,
                   by_lhs: Mapping[str, Sequence[int]], max_length: int = 8,
                   budget: int = 30000) -> String | None:
    """The shortest string found with two leftmost derivations (a bounded brute-force search)."""
    nts = set(nonterminals)
    minlen = {A: math.inf for A in nts}
    changed = True
    while changed:
        changed = False
        for lhs, rhs, _ in prods:
            m = sum(minlen[x] if x in nts else 1 for x in rhs)
            if m < minlen[lhs]:
                minlen[lhs] = m
                changed = True
    alts = {A: [prods[k][1] for k in ks] for A, ks in by_lhs.items()}
    level = {(start,): 1}
    done: dict[String, int] = {}
    spent = 0
    while level and spent < budget:
        nxt: dict[tuple, int] = {}
        for form, cnt in level.items():
            k = next((i for i, x in enumerate(form) if x in nts), None)
            if k is None:
                done[form] = min(2, done.get(form, 0) + cnt)
                continue
            for rhs in alts[form[k]]:
                new = form[:k] + rhs + form[k + 1:]
                if (len(new) > max_length + 4
                        or sum(minlen[x] if x in nts else 1 for x in new) > max_length):
                    continue
                nxt[new] = min(2, nxt.get(new, 0) + cnt)
                spent += 1
        level = nxt
    found = [s for s, c in done.items() if c >= 2]
    return min(found, key=lambda s: (len(s), s)) if found else None


def is_lr1(prods: Sequence[Production], nonterminals, start: str,
           by_lhs: Mapping[str, Sequence[int]], max_states: int = 3000) -> bool:
    """Sufficient for unambiguity, and passed by every LL(1) grammar and more (left recursion,
    for one): the canonical LR(1) automaton of the grammar augmented with S' -> start has no
    shift-reduce or reduce-reduce conflict (Knuth 1965; an LR(k) grammar is unambiguous). Rules
    count by index, so a repeated rule is a conflict. False (not proven) past ``max_states``.
    """
    nts = set(nonterminals)
    nullable: set[str] = set()
    first: dict[str, set] = {A: set() for A in nts}
    changed = True
    while changed:
        changed = False
        for lhs, rhs, _ in prods:
            for x in rhs:
                new = first[x] if x in nts else {x}
                if not new <= first[lhs]:
                    first[lhs] |= new
                    changed = True
                if x not in nullable:
                    break
            else:
                if lhs not in nullable:
                    nullable.add(lhs)
                    changed = True
    rules = [rhs for _, rhs, _ in prods] + [(start,)]  # the last is S' -> start
    end = None  # the end-of-input lookahead

    def lookaheads(seq, la) -> set:
        out = set()
        for x in seq:
            out |= first[x] if x in nts else {x}
            if x not in nullable:
                return out
        return out | {la}

    def closure(items) -> frozenset:
        items, todo = set(items), list(items)
        while todo:
            k, dot, la = todo.pop()
            rhs = rules[k]
            if dot < len(rhs) and rhs[dot] in nts:
                for b in lookaheads(rhs[dot + 1:], la):
                    for k2 in by_lhs[rhs[dot]]:
                        if (k2, 0, b) not in items:
                            items.add((k2, 0, b))
                            todo.append((k2, 0, b))
        return frozenset(items)

    states = {closure({(len(prods), 0, end)})}
    todo = list(states)
    while todo:
        state = todo.pop()
        reduce: dict = {}
        moves: dict = {}
        for k, dot, la in state:
            rhs = rules[k]
            if dot == len(rhs):
                if reduce.setdefault(la, k) != k:
                    return False  # reduce-reduce
            else:
                moves.setdefault(rhs[dot], set()).add((k, dot + 1, la))
        if any(la in moves for la in reduce):
            return False  # shift-reduce (nonterminals never collide with terminals or None)
        for items in moves.values():
            nxt = closure(items)
            if nxt not in states:
                if len(states) >= max_states:
                    return False
                states.add(nxt)
                todo.append(nxt)
    return True

"""Parsing with a PCFG over its own productions: the most probable tree, and every tree.

The chart runs on the grammar's ORIGINAL productions (not the internal binary grammar), so trees
show the user's nonterminals; epsilon and unary rules are handled directly. Items are
``(A, i, j)`` (nonterminal A derives ``s[i:j]``) and dotted prefixes ``(k, d, i, j)`` (the first
``d`` symbols of rule ``k`` derive ``s[i:j]``). Spans are filled by increasing width; inside a
span, unary rules and nullable siblings make items depend on items of the same span, so each span
is relaxed to a fixed point (Bellman-Ford on log probabilities).

Why the Viterbi relaxation is right: in a valid (productive) grammar every cycle of rules has
probability < 1 (a cycle whose rules all have probability 1 would be the only rules of its
nonterminals, which then derive nothing). A derivation that repeats an item on a root-to-leaf path
can drop the repeated part and gain a factor 1 / (cycle probability) > 1, so the best tree never
repeats an item and is found after at most (number of nonterminals + 1) rounds per span; in floats,
multiplying by a factor <= 1 never increases a value either, so the relaxation stops.

Identical rules (same left- and right-hand sides) are merged by summing their probabilities, so
each tree is listed once with its full probability.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from formal_lm.errors import FormalLMError, Problem

MAX_PARSE_LENGTH = 100  # the chart is pure Python, O(n^3 * total rule length)
MAX_PARSES = 10_000


@dataclasses.dataclass(frozen=True, repr=False)
class Tree:
    """An immutable parse tree: a nonterminal ``label`` over ``children`` (subtrees or terminals).

    ``str(tree)`` is the bracketed form NLTK prints; an epsilon rule gives a node with no children.

    Example:
        >>> t = Tree("S", (Tree("A", ("a",)), "b", Tree("E", ())))
        >>> print(t)
        (S (A a) b (E ))
        >>> t.leaves()
        ('a', 'b')
        >>> t.productions()
        [('S', ('A', 'b', 'E')), ('A', ('a',)), ('E', ())]
    """

    label: str
    children: tuple[Tree | str, ...] = ()

    def leaves(self) -> tuple[str, ...]:
        """The terminals under this node, left to right (the string the tree yields)."""
        out: list[str] = []
        stack: list[Tree | str] = [self]
        while stack:
            x = stack.pop()
            if isinstance(x, str):
                out.append(x)
            else:
                stack.extend(reversed(x.children))
        return tuple(out)

    def productions(self) -> list[tuple[str, tuple[str, ...]]]:
        """The rules the tree uses, ``(lhs, rhs)``, in leftmost-derivation order."""
        out, stack = [], [self]
        while stack:
            t = stack.pop()
            out.append((t.label, tuple(c if isinstance(c, str) else c.label
                                       for c in t.children)))
            stack.extend(c for c in reversed(t.children) if isinstance(c, Tree))
        return out

    def __repr__(self) -> str:
        return f"<Tree {self}>"

    def __str__(self) -> str:
        parts: list[str] = []
        stack: list = [self]
        while stack:
            x = stack.pop()
            if isinstance(x, Tree):
                parts.append(f"({x.label} " if x.children else f"({x.label} )")
                if x.children:
                    stack.append(")")
                    for k, c in enumerate(reversed(x.children)):
                        stack.append(c)
                        if k < len(x.children) - 1:
                            stack.append(" ")
            else:
                parts.append(x)
        return "".join(parts)


class Parse(NamedTuple):
    """A parse tree and its probability (the product of its rules' probabilities).

    Example:
        >>> tree, p = Parse(Tree("S", ("a",)), 0.5)
        >>> print(tree), p
        (S a)
        (None, 0.5)
    """

    tree: Tree
    prob: float


class _Grammar:
    """The merged rules of a PCFG, by left-hand side, with log probabilities."""

    def __init__(self, g):
        merged: dict[tuple[str, tuple[str, ...]], float] = {}
        for lhs, rhs, p in g.productions:
            merged[(lhs, tuple(rhs))] = merged.get((lhs, tuple(rhs)), 0.0) + p
        # log <= 0 even where a sum within the construction tolerance exceeds 1, so that no
        # cycle ever gains probability
        self.rules = [(lhs, rhs, p, math.log(min(p, 1.0))) for (lhs, rhs), p in merged.items()]
        self.nts = set(g.nonterminals)
        self.start = g.start


def tree_log_prob(g, tree: Tree) -> float:
    """ln of ``tree``'s probability under ``g``: the sum of its rules' log probabilities
    (identical rules merged); ``-inf`` when it uses a rule ``g`` does not have.

    Example:
        >>> from formal_lm.pcfg import PCFG
        >>> g = PCFG.from_nltk("S -> S S [0.3] | 'a' [0.7]")
        >>> round(math.exp(tree_log_prob(g, Tree("S", (Tree("S", ("a",)), Tree("S", ("a",)))))), 6)
        0.147
    """
    logp = {(lhs, rhs): lp for lhs, rhs, _, lp in _Grammar(g).rules}
    return math.fsum(logp.get(rule, -math.inf) for rule in tree.productions())


def _relax_span(G: _Grammar, s, i: int, j: int, best: dict, pre: dict) -> None:
    """Viterbi values and back-pointers of every item over ``s[i:j]`` (smaller spans done)."""
    nts = G.nts
    if i == j:
        for k, (_, _, _, lp) in enumerate(G.rules):
            pre[(k, 0, i, i)] = (lp, None)
    for _ in range(len(nts) + 2):
        changed = False
        for k, (lhs, rhs, _, _) in enumerate(G.rules):
            for d, x in enumerate(rhs, 1):
                top = pre.get((k, d, i, j))
                cur = top[0] if top else -math.inf
                arg = None
                for m in range(i, j + 1):
                    left = pre.get((k, d - 1, i, m))
                    if left is None:
                        continue
                    if x in nts:
                        right = best.get((x, m, j))
                        if right is None:
                            continue
                        v = left[0] + right[0]
                    elif j == m + 1 and s[m] == x:
                        v = left[0]
                    else:
                        continue
                    if v > cur:
                        cur, arg = v, m
                if arg is not None:
                    pre[(k, d, i, j)] = (cur, arg)
            done = pre.get((k, len(rhs), i, j))
            if done is not None:
                old = best.get((lhs, i, j))
                if old is None or done[0] > old[0]:
                    best[(lhs, i, j)] = (done[0], k)
                    changed = True
        if not changed:
            return


def _chart(G: _Grammar, s) -> tuple[dict, dict]:
    """``best[(A, i, j)] = (ln p, rule)`` and ``pre[(k, d, i, j)] = (ln p, split)`` for every item
    with a derivation (absent items have none)."""
    n = len(s)
    best: dict = {}
    pre: dict = {}
    for w in range(n + 1):
        for i in range(n - w + 1):
            _relax_span(G, s, i, i + w, best, pre)
    return best, pre


def _children(G: _Grammar, pre: dict, k: int, i: int, j: int) -> list:
    """The children of rule ``k`` over ``s[i:j]`` in the Viterbi chart: terminals and
    ``(A, m, e)`` items."""
    rhs = G.rules[k][1]
    out = []
    for d in range(len(rhs), 0, -1):
        m = pre[(k, d, i, j)][1]
        x = rhs[d - 1]
        out.append((x, m, j) if x in G.nts else x)
        j = m
    return out[::-1]


def _viterbi_tree(G: _Grammar, best: dict, pre: dict, root) -> Tree:
    """The tree of the back-pointers under ``root`` (built without recursion)."""
    def frame(item):
        A, i, j = item
        return A, _children(G, pre, best[item][1], i, j), []

    stack = [frame(root)]
    while True:
        label, specs, done = stack[-1]
        if len(done) == len(specs):
            t = Tree(label, tuple(done))
            stack.pop()
            if not stack:
                return t
            stack[-1][2].append(t)
        elif isinstance(specs[len(done)], str):
            done.append(specs[len(done)])
        else:
            stack.append(frame(specs[len(done)]))


def _checked_string(g, s, max_length: int):
    s = g.vocab.as_string(s)
    if len(s) > max_length:
        raise FormalLMError(Problem(
            f"string of length {len(s)} is longer than max_length={max_length}: the parse chart "
            "is pure Python, O(n^3 * total rule length)",
            "pass a larger max_length if you can wait, or use g.log_prob(s) for the probability"))
    return s


def viterbi_parse(g, s, *, max_length: int = MAX_PARSE_LENGTH) -> Parse | None:
    """The most probable parse tree of ``s`` under ``g``, with its probability.

    Runs on ``g``'s own productions (epsilon and unary rules included), so the tree shows the
    grammar's nonterminals. When several trees share the best probability, one of them is
    returned (always the same one).

    Args:
        g: a ``PCFG``.
        s: a string (tuple of symbols, or ``str`` when every symbol is one character).
        max_length: refuse longer strings (the chart is pure Python).

    Returns:
        ``Parse(tree, prob)``, or None when ``s`` has probability 0.

    Raises:
        FormalLMError: ``s`` longer than ``max_length`` or with symbols outside the alphabet.

    Example:
        >>> from formal_lm.pcfg import PCFG
        >>> g = PCFG.from_nltk('''
        ... S -> A B [1.0]
        ... A -> 'a' [0.6] | A 'a' [0.4]
        ... B -> 'b' [0.5] | 'a' B [0.5]
        ... ''')
        >>> tree, p = viterbi_parse(g, "aab")
        >>> print(tree)
        (S (A a) (B a (B b)))
        >>> round(p, 6)  # 1.0 * 0.6 * 0.5 * 0.5
        0.15
    """
    G, best, pre, root = _charted(g, s, max_length)
    if root not in best:
        return None
    return Parse(_viterbi_tree(G, best, pre, root), math.exp(best[root][0]))


def _charted(g, s, max_length: int):
    """(grammar tables, best chart, back-pointers, root item) of a checked string."""
    s = _checked_string(g, s, max_length)
    G = _Grammar(g)
    best, pre = _chart(G, s)
    return G, best, pre, (G.start, 0, len(s))


def _edges(G: _Grammar, best: dict, pre: dict, node) -> list[tuple]:
    """The hyperedges under a forest node: tuples of child nodes (terminals are strings)."""
    if len(node) == 3:  # (A, i, j): one edge per rule of A that derives s[i:j]
        A, i, j = node
        return [((k, len(rhs), i, j),) for k, (lhs, rhs, _, _) in enumerate(G.rules)
                if lhs == A and (k, len(rhs), i, j) in pre]
    k, d, i, j = node
    if d == 0:
        return [()]
    x = G.rules[k][1][d - 1]
    out = []
    for m in range(i, j + 1):
        if (k, d - 1, i, m) not in pre:
            continue
        if x in G.nts:
            if (x, m, j) in best:
                out.append(((k, d - 1, i, m), (x, m, j)))
        elif j == m + 1:
            out.append(((k, d - 1, i, m), x))  # node exists, so s[m] == x
    return out


def _forest(G: _Grammar, best: dict, pre: dict, root) -> tuple[dict, list]:
    """The hyperedges of every node under ``root`` and the nodes in post-order.

    Raises:
        FormalLMError: a node under ``root`` lies on a cycle (infinitely many parses).
    """
    edges: dict = {}
    order: list = []
    on_path: set = set()
    stack = [(root, None)]
    while stack:
        node, it = stack.pop()
        if it is None:
            if node in edges:
                continue
            edges[node] = _edges(G, best, pre, node)
            on_path.add(node)
            it = iter([c for e in edges[node] for c in e if not isinstance(c, str)])
        for child in it:
            if child in on_path:
                what = child[0] if len(child) == 3 else G.rules[child[0]][0]
                raise FormalLMError(Problem(
                    f"the string has infinitely many parses: {what} derives itself over "
                    f"s[{child[-2]}:{child[-1]}] (a cycle of unary rules, or of rules whose other "
                    "symbols derive the empty string)",
                    "use viterbi_parse, which is exact with cycles, or g.log_prob(s) for the total "
                    "probability"))
            if child not in edges:
                stack.append((node, it))
                stack.append((child, None))
                break
        else:
            on_path.discard(node)
            order.append(node)
    return edges, order


def parses(g, s, *, max_parses: int = MAX_PARSES,
           max_length: int = MAX_PARSE_LENGTH) -> list[Parse]:
    """Every parse tree of ``s`` under ``g`` with its probability, most probable first.

    The probabilities sum to ``g.prob(s)`` (up to float rounding): each tree is one derivation
    class of the grammar's own productions. The trees are counted exactly first (a polynomial
    pass over the parse forest), so a string with too many parses is refused at once.

    Args:
        g: a ``PCFG``.
        s: a string (tuple of symbols, or ``str`` when every symbol is one character).
        max_parses: refuse when ``s`` has more parses than this (the list would not fit).
        max_length: refuse longer strings (the chart is pure Python).

    Returns:
        ``[Parse(tree, prob), ...]`` sorted by decreasing probability (ties by the bracketed
        tree); empty when ``s`` has probability 0.

    Raises:
        FormalLMError: ``s`` has infinitely many parses (a unary or epsilon cycle over one span),
            more than ``max_parses``, is longer than ``max_length``, or has unknown symbols.

    Example:
        >>> from formal_lm.pcfg import PCFG
        >>> g = PCFG.from_nltk("S -> S S [0.3] | 'a' [0.7]")  # two bracketings of "aaa"
        >>> for tree, p in parses(g, "aaa"):
        ...     print(tree, round(p, 6))
        (S (S a) (S (S a) (S a))) 0.03087
        (S (S (S a) (S a)) (S a)) 0.03087
        >>> round(g.prob("aaa"), 6)
        0.06174
    """
    G, best, pre, root = _charted(g, s, max_length)
    if root not in best:
        return []
    edges, order = _forest(G, best, pre, root)
    count: dict = {}
    for node in order:
        count[node] = sum(math.prod(1 if isinstance(c, str) else count[c] for c in e)
                          for e in edges[node])
    if count[root] > max_parses:
        raise FormalLMError(Problem(
            f"the string has {count[root]} parses, more than max_parses={max_parses}",
            "pass a larger max_parses, or use viterbi_parse for the best one"))
    # every node under the root has at most count[root] trees, so each list below is bounded
    trees: dict = {}
    for node in order:
        if len(node) == 3:
            trees[node] = [(p, Tree(node[0], kids)) for (e,) in edges[node]
                           for p, kids in trees[e]]
        elif node[1] == 0:
            trees[node] = [(G.rules[node[0]][2], ())]
        else:
            out = []
            for left, x in edges[node]:
                right = [(1.0, x)] if isinstance(x, str) else trees[x]
                out += [(p * q, kids + (t,)) for p, kids in trees[left] for q, t in right]
            trees[node] = out
    result = [Parse(t, p) for p, t in trees[root]]
    result.sort(key=lambda r: (-r.prob, str(r.tree)))
    return result

"""Probabilistic context-free grammars, exactly: inside, prefix and next-token probabilities.

A ``PCFG`` is built from ``(lhs, rhs, prob)`` productions (or NLTK's text notation) and checked at
construction: probabilities, symbols, reachability, productivity and tightness. Epsilon and unary
rules are allowed; internally the grammar is turned into an equivalent *weighted* binary grammar
on which the chart algorithms run.

Modules: ``_grammar`` (the ``PCFG`` class), ``_notation`` (NLTK text notation), ``_checks``
(construction checks, tightness), ``_normal_form`` (partition functions, the binary grammar),
``_charts`` (inside, prefix and next-token algorithms), ``_ambiguity`` (LL(1) check, ambiguity
search), ``_parse`` (Viterbi and all parses over the grammar's own rules), ``_transforms``
(Chomsky normal form, intersection with a DFA), ``_nltk_objects`` (NLTK grammar objects).
"""
from formal_lm.pcfg._checks import SUM_TOLERANCE, TIGHT_TOLERANCE
from formal_lm.pcfg._grammar import PCFG
from formal_lm.pcfg._nltk_objects import from_nltk_grammar, nltk_text
from formal_lm.pcfg._normal_form import Production, partition_functions
from formal_lm.pcfg._parse import Parse, Tree, parses, tree_log_prob, viterbi_parse
from formal_lm.pcfg._transforms import acceptance_probability, intersect, to_cnf

__all__ = ["PCFG", "SUM_TOLERANCE", "TIGHT_TOLERANCE", "Parse", "Production", "Tree",
           "acceptance_probability", "from_nltk_grammar", "intersect", "nltk_text",
           "parses", "partition_functions", "to_cnf", "tree_log_prob", "viterbi_parse"]

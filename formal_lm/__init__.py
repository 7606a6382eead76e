"""formal_lm: exact formal languages, JAX language models trained on them, and analyzers of how
those models generalize off distribution.

Example:
    >>> import formal_lm as fl
    >>> lang = fl.load("anbn")
    >>> lang.next_token_dist("aab")
    {'a': 0.0, 'b': 1.0, '</s>': 0.0}
"""
from formal_lm.counter import Block, CounterLanguage
from formal_lm.count_splits import exclude_counts, held_out_combinations
from formal_lm.dyck import DyckLanguage
from formal_lm.errors import FormalLMError, GrammarError, Location, Problem, ZeroProbabilityPrefix
from formal_lm.grammar_files import load, loads, shipped
from formal_lm.language import Language, LengthStats, LossFloor, enumerate_strings
from formal_lm.pcfg import PCFG
from formal_lm.pfsa import PFSA, dfa_to_pfsa, random_pdfa
from formal_lm.priors import Geometric, Uniform
from formal_lm.rules import RULE_KINDS, Rule
from formal_lm.splits import Split, exclude_production, twin_split
from formal_lm.vocab import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, Vocab

__all__ = [
    # languages
    "Language", "CounterLanguage", "Block", "DyckLanguage", "PFSA", "PCFG",
    "dfa_to_pfsa", "random_pdfa", "Uniform", "Geometric", "Rule", "RULE_KINDS",
    "LengthStats", "LossFloor", "enumerate_strings",
    # compositional splits
    "Split", "exclude_production", "exclude_counts", "held_out_combinations", "twin_split",
    # grammar files
    "load", "loads", "shipped",
    # tokens
    "Vocab", "EOS", "BOS", "PAD", "EOS_ID", "BOS_ID", "PAD_ID",
    # errors
    "FormalLMError", "GrammarError", "ZeroProbabilityPrefix", "Problem", "Location",
]

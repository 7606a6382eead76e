"""formal_lm: exact formal languages, JAX language models trained on them, and analyzers of how
those models generalize off distribution."""
from formal_lm.errors import FormalLMError, GrammarError, Location, Problem, ZeroProbabilityPrefix
from formal_lm.language import Language, LengthStats, LossFloor
from formal_lm.rules import Rule
from formal_lm.vocab import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, Vocab
from formal_lm.counter import Block, CounterLanguage
from formal_lm.dyck import DyckLanguage
from formal_lm.grammar_files import load, loads, shipped
from formal_lm.pfsa import PFSA, dfa_to_pfsa, random_pdfa
from formal_lm.priors import Geometric, Uniform
from formal_lm.pcfg import PCFG

"""Paper-specific domain code, apart from the runners: the in-context-learning automaton family
(``icl``) and the function-preserving reparametrisation of the fine-tuning study (``reparam``).
Stability: experimental."""

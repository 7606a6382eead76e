"""Supervised tasks on the training loop: recognizers (membership) and transducers
(input string -> output string), encoded by :mod:`formal_lm.tasks.encoding`."""

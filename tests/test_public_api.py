"""The public surface: every exported name is documented, and __all__ is what the package has."""
import inspect

import formal_lm as fl

CONSTANTS = {"EOS", "BOS", "PAD", "EOS_ID", "BOS_ID", "PAD_ID", "RULE_KINDS"}


def test_all_names_exist_and_are_documented():
    for name in fl.__all__:
        obj = getattr(fl, name)
        if name in CONSTANTS:
            continue
        assert inspect.getdoc(obj), f"formal_lm.{name} has no docstring"


def test_all_lists_every_public_name():
    public = {n for n, v in vars(fl).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public == set(fl.__all__)

"""``python -m formal_lm.training CONFIG.toml RUN_DIR [...]``: the same as
``formal-lm train CONFIG.toml --out RUN_DIR [...]`` (one command line for training)."""
from __future__ import annotations

import sys

from formal_lm.cli import main as cli_main


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) < 2 or argv[0].startswith("-") or argv[1].startswith("-"):
        print("usage: python -m formal_lm.training CONFIG.toml RUN_DIR [--resume] "
              "[--no-progress] [--cpu-devices N]", file=sys.stderr)
        return 2
    return cli_main(["train", argv[0], "--out", argv[1], *argv[2:]])


if __name__ == "__main__":
    sys.exit(main())

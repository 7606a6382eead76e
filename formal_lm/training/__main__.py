"""``python -m formal_lm.training CONFIG.toml RUN_DIR [--resume] [--no-progress]``."""
from __future__ import annotations

import argparse
import json
import sys

from formal_lm.errors import FormalLMError
from formal_lm.training import load_config, train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m formal_lm.training", description=__doc__)
    ap.add_argument("config", help="TOML training config")
    ap.add_argument("run_dir", help="output directory")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    try:
        res = train(load_config(args.config), args.run_dir, resume=args.resume,
                    progress=not args.no_progress)
    except FormalLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in res.final:
        print(json.dumps(line))
    print(f"{res.step} steps in {res.wall_time:.1f}s; optimal loss {res.optimal_loss:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

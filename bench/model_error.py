"""The fitted step-time model's error per (batch, K) cell of one or more profiles.

For each profile, per role, a markdown table (rows batch, columns K) of the signed error % of
the purely linear fit and of the fit with its token correction, plus how many cells miss by
more than 10% (see `specserve_engine.policy.model_error`). Pure: reads JSON, runs no engine.

    python bench/model_error.py PROFILE [PROFILE ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specserve_engine.policy import Profile
from specserve_engine.policy.model_error import markdown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("profiles", nargs="+", type=Path, help="profile JSON (`specserve profile`)")
    ap.add_argument("--tolerance", type=float, default=0.10, help="relative miss to flag")
    args = ap.parse_args(argv)
    for path in args.profiles:
        print(markdown(Profile.load(path), name=path.name, tolerance=args.tolerance))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The trace-replay benchmark (the same as `specserve bench`); see bench/RESULTS.md.

    python bench/trace_replay.py --quick
    python bench/trace_replay.py -o bench-results
"""

import sys

from specserve_engine.trace_replay.command import main

if __name__ == "__main__":
    sys.exit(main())

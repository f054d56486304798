"""The event kernel's own cost: `specserve_sim.events.Kernel` against SimPy on the same pattern.

The pattern of the full-trace run (docs/simulator.md): R replicas stepping back to back (a step
of random length), plus arrivals. Each kernel dispatches the same number of events; nothing else
runs, so the difference is the kernel's overhead per event. SimPy is not a dependency: install
it anywhere and put it on PYTHONPATH to include it (e.g. pip install --target /tmp/simpy simpy).

    python bench/sim_kernel.py [--replicas 32] [--steps 60000]
"""

from __future__ import annotations

import argparse
import random
import time

from specserve_sim.events import Kernel


def _durations(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0.005, 0.03) for _ in range(n)]


def ours(replicas: int, steps: int) -> float:
    k = Kernel()
    durations = _durations(steps)
    left = [steps // replicas] * replicas

    def step(i: int) -> None:
        left[i] -= 1
        if left[i] > 0:
            k.after(durations[left[i]], lambda: step(i))

    for i in range(replicas):
        k.at(0.0, lambda i=i: step(i))
    started = time.perf_counter()
    k.run()
    return time.perf_counter() - started


def simpy_run(replicas: int, steps: int) -> float | None:
    try:
        import simpy
    except ImportError:
        return None
    env = simpy.Environment()
    durations = _durations(steps)

    def replica() -> object:
        for j in range(steps // replicas - 1, 0, -1):
            yield env.timeout(durations[j])

    for _ in range(replicas):
        env.process(replica())
    started = time.perf_counter()
    env.run()
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--replicas", type=int, default=32)
    p.add_argument("--steps", type=int, default=60_000)
    args = p.parse_args()
    mine = min(ours(args.replicas, args.steps) for _ in range(3))
    print(f"heapq kernel: {mine * 1e6 / args.steps:.2f} us/event ({mine:.3f} s)")
    theirs = [t for _ in range(3) if (t := simpy_run(args.replicas, args.steps)) is not None]
    if theirs:
        print(f"SimPy:        {min(theirs) * 1e6 / args.steps:.2f} us/event ({min(theirs):.3f} s)")
    else:
        print("SimPy: not installed (see the docstring)")


if __name__ == "__main__":
    main()

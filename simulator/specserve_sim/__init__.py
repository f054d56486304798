"""specserve_sim: a discrete-event simulator of a SpecServe cluster (docs/simulator.md).

Requests from a trace go through the gateway's own routing function onto simulated vLLM-like
replicas; each replica runs the engine's own policy code (K per step, draft trimming, refits);
a controller (the operator's decisions, or a baseline) runs every interval on windows of the
simulated metrics. Step times and acceptance come from ground truth that is independent of the
policy's model: raw step records or a published GPU model, and the real engine's verifications.

- `interface`: the types a controller sees and answers (stable).
- `events`: the event kernel.  `groundtruth`: step-time table, verification sampler.
- `hardware`: the published GPU step-time model.  `replica`: one vLLM-like engine.
- `cluster`: gateway routing, replicas, controller loop.  `workload`: trace -> requests.
- `validate`: simulated vs real bench results.
"""

from specserve_sim.interface import (
    ControlDecision,
    Controller,
    ReplicaView,
    RequestRecord,
    ScalingEvent,
    SeriesPoint,
    SimRequest,
    SimResult,
    StepRecord,
    Window,
)

__all__ = [
    "ControlDecision",
    "Controller",
    "ReplicaView",
    "RequestRecord",
    "ScalingEvent",
    "SeriesPoint",
    "SimRequest",
    "SimResult",
    "StepRecord",
    "Window",
]

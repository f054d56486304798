"""What the simulated cluster shows a controller, and what a controller may answer. Stable.

Every `Controller.interval_s` seconds of simulated time the cluster hands the controller a
`Window`: what happened since the previous call (requests that finished, engine steps, arrivals)
and how the replicas stand now. The controller answers a `ControlDecision`: a new replica count
(new replicas become ready after the cluster's cold-start delay; removed ones drain), a new
policy for every replica (adopted as the engine's `PolicyStore` adopts a push), or nothing.

These are the only types the control side (operator in the loop, HPA-style, planner) depends on;
fields are only ever added, with defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from specserve_engine.policy import ModelParams, Policy


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request of the workload: when it reaches the gateway and how long it is."""

    request_id: str
    arrival: float  # simulated seconds
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica as the control side sees it at the end of a window."""

    name: str
    ready: bool  # serving (routable)
    starting: bool  # asked for, not ready yet (cold start)
    draining: bool  # removed: finishes what it runs, takes nothing new
    running: int  # requests in its running set
    waiting: int  # requests queued in the replica, not yet scheduled
    # What the replica's policy learned online (GET /specserve/policy "fitted"); None before any.
    fitted: ModelParams | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request's life, as vLLM and the bench client measure it (seconds, simulated)."""

    request_id: str
    arrival: float
    first_token: float | None  # when the first output token was produced
    finish: float | None  # when the last one was
    prompt_tokens: int
    output_tokens: int
    replica: str  # "" while never routed

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def e2e(self) -> float | None:
        return None if self.finish is None else self.finish - self.arrival

    @property
    def tpot(self) -> float | None:
        """vLLM's and the bench's definition: (e2e - ttft) / (n - 1); None below two tokens."""
        if self.finish is None or self.first_token is None or self.output_tokens < 2:
            return None
        return (self.finish - self.first_token) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One engine step of one replica (`time` is when it ended)."""

    time: float
    replica: str
    batch: int  # requests scheduled in the step (decodes and prefill chunks)
    k: int  # draft steps run at the end of this step (the K decided for the next verify)
    drafted: int  # draft tokens verified in this step (after trimming)
    accepted: int  # of those, accepted
    seconds: float  # ground-truth duration: draft + verify + host
    predicted_seconds: float  # what the replica's policy predicted (0 when it has none)
    verifies: int = 0  # requests that verified drafts in this step (vLLM's "drafts" counter)


@dataclass(frozen=True)
class Window:
    """Everything since the previous controller call, and the replicas now."""

    start: float
    end: float
    finished: list[RequestRecord]
    steps: list[StepRecord]
    arrivals: int
    replicas: list[ReplicaView]
    in_flight: int  # arrived and not finished, anywhere (held, waiting or running)
    policy: Policy  # the policy the cluster's replicas run now
    held: int = 0  # requests held at the gateway now because no replica is ready


@dataclass(frozen=True)
class ControlDecision:
    """What a controller wants; None leaves that part as it is."""

    replicas: int | None = None
    policy: Policy | None = None
    reason: str = ""


class Controller(Protocol):
    """Called every `interval_s` simulated seconds with the window since the last call."""

    interval_s: float

    def decide(self, now: float, window: Window) -> ControlDecision: ...


@dataclass(frozen=True, slots=True)
class ScalingEvent:
    """A replica count change the cluster applied."""

    time: float
    replicas_from: int
    replicas_to: int
    reason: str


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """The cluster at the end of one window (one per controller interval, or per `window_s`)."""

    time: float
    arrivals_per_s: float
    in_flight: int
    ready: int
    starting: int
    draining: int
    mean_k: float | None  # draft tokens verified per decoding request-step in the window
    attainment: float | None  # finished requests in the window meeting the TPOT SLO
    goodput_tok_s: float  # output tokens of requests finished in the window per second


@dataclass
class SimResult:
    """A whole run: every request, every step, the time series and the scaling history."""

    requests: list[RequestRecord]
    steps: list[StepRecord]
    series: list[SeriesPoint]
    scaling: list[ScalingEvent]
    replica_seconds: float  # replicas held (starting, ready or draining) x seconds
    end_time: float
    decisions: list[tuple[float, ControlDecision]] = field(default_factory=list)

"""The cluster: the gateway's routing, cold starts, drains, windows and the controller loop."""

from dataclasses import dataclass, field
from itertools import pairwise

from specserve_engine.policy import Policy
from specserve_sim.cluster import Cluster
from specserve_sim.interface import ControlDecision, SimRequest, Window
from specserve_sim.replica import ReplicaConfig
from tests.sim.helpers import requests, truth

OFF = ReplicaConfig("off", engine_k_max=0, specserve=False)


@dataclass
class Scripted:
    """A controller that answers a fixed decision at given times and keeps every window."""

    interval_s: float
    plan: dict[int, ControlDecision]
    windows: list[Window] = field(default_factory=list)

    def decide(self, now: float, window: Window) -> ControlDecision:
        self.windows.append(window)
        return self.plan.get(len(self.windows), ControlDecision())


def test_requests_are_spread_by_the_gateways_least_outstanding_rule() -> None:
    gt, _ = truth()
    # Four at once onto two idle replicas: least outstanding, then least served, alternate.
    result = Cluster(requests(4, gap=0.0), OFF, gt, 2).run()
    by_replica = [r.replica for r in result.requests]
    assert by_replica == ["replica-000", "replica-001", "replica-000", "replica-001"]


def test_a_new_replica_takes_traffic_only_after_its_cold_start() -> None:
    gt, _ = truth()
    controller = Scripted(1.0, {1: ControlDecision(replicas=2, reason="test")})
    reqs = requests(200, gap=0.05, output=10)
    result = Cluster(reqs, OFF, gt, 1, controller, cold_start_s=3.0).run()
    assert [(e.replicas_from, e.replicas_to) for e in result.scaling] == [(1, 2)]
    on_new = [r for r in result.requests if r.replica == "replica-001"]
    assert on_new and min(r.arrival for r in on_new) >= 1.0 + 3.0
    assert any(w.replicas and any(v.starting for v in w.replicas) for w in controller.windows)


def test_a_drained_replica_finishes_its_requests_and_takes_no_new_ones() -> None:
    gt, _ = truth()
    controller = Scripted(0.5, {1: ControlDecision(replicas=1)})
    reqs = requests(100, gap=0.02, output=30)
    result = Cluster(reqs, OFF, gt, 2, controller, drain=True).run()
    assert all(r.finish is not None for r in result.requests)
    drained = {r.replica for r in result.requests} - {"replica-000", "replica-001"}
    assert not drained
    gone = [r for r in result.requests if r.replica == "replica-000"]
    late = [r for r in result.requests if r.arrival > 0.5]
    # The drained one (fewest outstanding, then by name) got nothing after the decision.
    assert gone and late and all(r.replica != "replica-000" for r in late)


def test_without_drain_a_removed_replicas_requests_are_lost() -> None:
    gt, _ = truth()
    controller = Scripted(0.5, {1: ControlDecision(replicas=1)})
    result = Cluster(requests(60, gap=0.02, output=40), OFF, gt, 2, controller,
                     drain=False).run()
    lost = [r for r in result.requests if r.finish is None]
    # Lost: the ones the removed replica held when it stopped (never finished).
    assert lost and {r.replica for r in lost} == {"replica-000"}


def test_with_no_ready_replica_requests_wait_at_the_gateway() -> None:
    gt, _ = truth()
    controller = Scripted(1.0, {1: ControlDecision(replicas=1)})
    result = Cluster(requests(5, gap=0.1), OFF, gt, 0, controller, cold_start_s=2.0).run()
    assert all(r.finish is not None and r.first_token >= 3.0 for r in result.requests)
    assert controller.windows[0].held == 5 and controller.windows[0].in_flight == 5


def test_windows_account_for_every_arrival_finish_and_step() -> None:
    gt, _ = truth()
    controller = Scripted(0.25, {})
    result = Cluster(requests(40, gap=0.03), OFF, gt, 2, controller).run()
    windows = controller.windows
    assert windows and all(a.end == b.start for a, b in pairwise(windows))
    last = windows[-1].end
    # The run stops at the last finish; what came after the last window is in the last point.
    assert sum(w.arrivals for w in windows) + sum(r.arrival > last for r in result.requests) \
        == 40
    assert sum(len(w.finished) for w in windows) + sum(
        r.finish is not None and r.finish > last for r in result.requests) == 40
    assert sum(len(w.steps) for w in windows) + sum(s.time > last for s in result.steps) \
        == len(result.steps)
    assert len(result.series) in (len(windows), len(windows) + 1)
    assert sum(p.goodput_tok_s * 0.25 for p in result.series[:len(windows)]) \
        <= sum(r.output_tokens for r in result.requests) + 1e-6


def test_a_pushed_policy_reaches_every_replica_including_later_ones() -> None:
    gt, _ = truth()
    config = ReplicaConfig("adaptive", Policy(version=1))
    new = Policy(version=2, mode="static", k_max=5, static_k=2)
    controller = Scripted(0.5, {1: ControlDecision(policy=new),
                                2: ControlDecision(replicas=3)})
    cluster = Cluster(requests(200, gap=0.02, output=20), config, gt, 2, controller,
                      cold_start_s=0.5)
    result = cluster.run()
    assert all(r.policy == new for r in cluster.replicas)
    assert all(w.policy == new for w in controller.windows[1:])
    late = [s for s in result.steps if s.time > 1.0 and s.k]
    assert late and {s.k for s in late} == {2}


def test_replica_seconds_count_starting_ready_and_draining_time() -> None:
    gt, _ = truth()
    result = Cluster([SimRequest("a", 0.0, 10, 5)], OFF, gt, 3).run()
    assert result.replica_seconds == 3 * result.end_time

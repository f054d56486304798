"""Pure routing: route tables, least-outstanding choice, down marks, error shapes, and the
cluster -> table mapping of the Kubernetes source (plain dicts, as the API returns them)."""

from __future__ import annotations

import pytest

from specserve_gateway import kube_routes, routing

A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"


# ------------------------------------------------------------------------------ route table


def test_flags_build_a_table_with_several_backends_per_model() -> None:
    table = routing.table_from_flags(
        [f"tiny={B},{A}", f"tiny={A}/", f"chat={C}"], ["chat=qwen2.5-7b-instruct"]
    )
    assert table.models() == ["chat", "tiny"]
    assert table.get("tiny") == routing.Route("tiny", (A, B))  # sorted, deduplicated, no slash
    assert table.get("chat") == routing.Route("chat", (C,), "qwen2.5-7b-instruct")
    assert table.get("nope") is None


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("tiny", "MODEL=URL"),
        ("=http://a:1", "MODEL=URL"),
        ("tiny=", "MODEL=URL"),
        ("tiny=ftp://a:1", "http://host:port"),
        ("tiny=10.0.0.1:8000", "http://host:port"),
        ("tiny=http://a:99999", "bad port"),
        ("tiny=http://a:1/?x=1", "query"),
    ],
)
def test_bad_backend_flags_say_what_is_wrong(flag: str, message: str) -> None:
    with pytest.raises(routing.RouteError, match=message):
        routing.table_from_flags([flag])


def test_upstream_model_for_an_unknown_model_is_refused() -> None:
    with pytest.raises(routing.RouteError, match="unknown model"):
        routing.table_from_flags([f"tiny={A}"], ["chat=x"])


def test_routes_document_both_forms() -> None:
    table = routing.table_from_document({"models": {
        "tiny": [A, B],
        "chat": {"backends": [C], "upstreamModel": "qwen"},
        "cold": {"backends": []},
    }})
    assert table.get("tiny") == routing.Route("tiny", (A, B))
    assert table.get("chat") == routing.Route("chat", (C,), "qwen")
    assert table.get("cold") == routing.Route("cold", ())
    assert table.to_json()["chat"] == {"backends": [C], "upstreamModel": "qwen"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "top-level `models:`"),
        ({"models": {"tiny": "http://a:1"}}, "list of URLs"),
        ({"models": {"tiny": {"backends": [A], "weight": 2}}}, "unknown key"),
        ({"models": {"tiny": {"backends": [1]}}}, "URL strings"),
    ],
)
def test_bad_routes_documents_are_refused(doc: object, message: str) -> None:
    with pytest.raises(routing.RouteError, match=message):
        routing.table_from_document(doc)


def test_merged_tables_pool_backends() -> None:
    one = routing.RouteTable.from_mapping({"tiny": [A], "chat": [C]})
    two = routing.RouteTable.from_mapping({"tiny": [B]}, {"tiny": "t"})
    merged = one.merged(two)
    assert merged.get("tiny") == routing.Route("tiny", (A, B), "t")
    assert merged.get("chat") == routing.Route("chat", (C,))


# ---------------------------------------------------------------------------- balancing


def test_least_outstanding_first_then_fewest_served_then_url() -> None:
    assert routing.order_backends([A, B, C], {A: 2, B: 0, C: 1}, {}) == [B, C, A]
    assert routing.order_backends([A, B, C], {A: 1, B: 1, C: 1}, {A: 5, B: 3, C: 4}) == [B, C, A]
    assert routing.order_backends([C, B, A], {}, {}) == [A, B, C]


def test_down_backends_go_last_but_stay_in_the_list() -> None:
    assert routing.order_backends([A, B], {B: 7}, {}, down=[A]) == [B, A]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_balancer_spreads_concurrent_requests_and_releases_once() -> None:
    bal = routing.Balancer()
    leases = [bal.acquire(bal.order([A, B])[0]) for _ in range(4)]
    assert bal.outstanding == {A: 2, B: 2}
    leases[0].release()
    leases[0].release()  # idempotent: a stream may end twice (normal end and cleanup)
    assert bal.outstanding == {A: 1, B: 2}
    assert bal.order([A, B])[0] == A
    for lease in leases[1:]:
        lease.release()
    assert bal.outstanding == {}
    assert bal.served == {A: 2, B: 2}


def test_idle_pool_alternates() -> None:
    bal = routing.Balancer()
    picks = []
    for _ in range(6):
        lease = bal.acquire(bal.order([A, B, C])[0])
        picks.append(lease.url)
        lease.release()
    assert picks == [A, B, C, A, B, C]


def test_down_mark_expires() -> None:
    clock = Clock()
    bal = routing.Balancer(down_for=5.0, clock=clock)
    bal.mark_down(A)
    assert bal.order([A, B]) == [B, A]
    assert bal.snapshot([A, B])[A] == {"outstanding": 0, "served": 0, "failures": 1, "down": True}
    clock.now += 5.1
    assert bal.down() == set()
    assert bal.order([A, B]) == [A, B]
    bal.mark_down(B)
    bal.mark_up(B)
    assert bal.down() == set()


# ------------------------------------------------------------------------------- errors


def test_error_bodies_have_openai_shape() -> None:
    for body in (
        routing.model_not_found("x"),
        routing.invalid_request("bad", "model"),
        routing.backend_unavailable("x", "no ready replicas"),
        routing.backend_timeout("x", 2.0),
    ):
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert routing.model_not_found("x")["error"]["code"] == "model_not_found"
    assert routing.model_not_found("x")["error"]["type"] == "invalid_request_error"
    assert routing.backend_unavailable("x", "d")["error"]["type"] == "server_error"


# --------------------------------------------------------------- Kubernetes source (pure)


def ssd(name: str, ns: str = "default", served: str | None = None) -> dict:
    model = {"target": "tiny", **({"servedName": served} if served else {})}
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"model": model}}


def eps(service: str, ns: str, endpoints: list[tuple[str, bool | None]],
        port_name: str = "http", port: int = 8000) -> dict:
    return {
        "metadata": {"name": f"{service}-abc", "namespace": ns,
                     "labels": {kube_routes.SERVICE_NAME_LABEL: service}},
        "ports": [{"name": "control", "port": 8001}, {"name": port_name, "port": port}],
        "endpoints": [
            {"addresses": [ip], **({} if ready is None else {"conditions": {"ready": ready}})}
            for ip, ready in endpoints
        ],
    }


def test_cluster_table_routes_served_names_to_ready_pods() -> None:
    table = kube_routes.table_from_cluster(
        [ssd("tiny", served="tiny-chat"), ssd("qwen"), ssd("cold", "ml")],
        [
            eps("tiny", "default", [("10.1.0.1", True), ("10.1.0.2", False), ("10.1.0.3", None)]),
            eps("qwen", "default", [("fd00::5", True)]),
            eps("qwen", "other-ns", [("10.9.9.9", True)]),  # another namespace's Service
            eps("cold", "ml", [("10.2.0.1", False)]),
        ],
    )
    assert table.get("tiny-chat") == routing.Route(
        "tiny-chat", ("http://10.1.0.1:8000", "http://10.1.0.3:8000"))
    assert table.get("qwen") == routing.Route("qwen", ("http://[fd00::5]:8000",))
    assert table.get("cold") == routing.Route("cold", ())  # known model, nothing ready -> 503
    assert table.get("tiny") is None


def claimed(name: str, ns: str, served: str, created: str | None) -> dict:
    obj = ssd(name, ns, served)
    if created is not None:
        obj["metadata"]["creationTimestamp"] = created
    return obj


def test_cluster_table_gives_a_model_name_to_its_first_claim_only() -> None:
    """Issue #24: one tenant's resource must not take another's traffic by serving its name."""
    first = claimed("a", "team-a", "m", "2026-01-01T00:00:00Z")
    later = claimed("b", "team-b", "m", "2026-02-01T00:00:00Z")
    slices = [eps("a", "team-a", [("10.0.0.1", True)]), eps("b", "team-b", [("10.0.0.2", True)])]
    for order in ([first, later], [later, first]):  # list order does not matter
        table = kube_routes.table_from_cluster(order, slices)
        assert table.get("m") == routing.Route("m", (A,))
        # explicit addresses: each namespace's own pods, forwarded as the served name
        assert table.get("team-a/m") == routing.Route("team-a/m", (A,), "m", listed=False)
        assert table.get("team-b/m") == routing.Route("team-b/m", (B,), "m", listed=False)
        assert table.conflicts == (routing.RouteConflict("m", "team-b", ("b",), "team-a/a"),)
    assert "'team-b/m'" in table.conflicts[0].message()


def test_cluster_table_claim_ties_break_by_namespace_then_name() -> None:
    same = "2026-01-01T00:00:00Z"
    table = kube_routes.table_from_cluster(
        [claimed("z", "ns2", "m", same), claimed("y", "ns1", "m", same),
         claimed("x", "ns3", "m", None)],  # no timestamp yet: after every stamped claim
        [eps("z", "ns2", [("10.0.0.2", True)]), eps("y", "ns1", [("10.0.0.1", True)]),
         eps("x", "ns3", [("10.0.0.3", True)])],
    )
    assert table.get("m") == routing.Route("m", (A,))
    assert [(c.namespace, c.holder) for c in table.conflicts] == [
        ("ns2", "ns1/y"), ("ns3", "ns1/y")]


def test_cluster_table_pools_resources_of_one_namespace_serving_one_model() -> None:
    table = kube_routes.table_from_cluster(
        [claimed("a", "ns1", "m", "2026-01-02T00:00:00Z"),
         claimed("b", "ns1", "m", "2026-01-01T00:00:00Z")],
        [eps("a", "ns1", [("10.0.0.1", True)]), eps("b", "ns1", [("10.0.0.2", True)])],
    )
    assert table.get("m") == routing.Route("m", (A, B))  # one tenant: pooled, no conflict
    assert table.conflicts == ()


def test_a_bare_name_cannot_take_another_namespaces_qualified_address() -> None:
    """servedName "victim/m" in team-x must not capture what clients address as victim/m."""
    table = kube_routes.table_from_cluster(
        [claimed("m", "victim", "m", "2026-02-01T00:00:00Z"),
         claimed("evil", "team-x", "victim/m", "2026-01-01T00:00:00Z")],
        [eps("m", "victim", [("10.0.0.1", True)]), eps("evil", "team-x", [("10.0.0.2", True)])],
    )
    assert table.get("victim/m") == routing.Route("victim/m", (A,), "m", listed=False)
    assert table.get("team-x/victim/m") == routing.Route("team-x/victim/m", (B,), "victim/m",
                                                              listed=False)
    assert [(c.model, c.namespace) for c in table.conflicts] == [("victim/m", "team-x")]


def test_slice_without_an_http_port_gives_no_backends() -> None:
    assert kube_routes.slice_urls(eps("a", "ns", [("10.0.0.1", True)], port_name="grpc")) == []


def test_watch_events_update_the_store_and_errors_ask_for_a_relist() -> None:
    store: dict[str, dict] = {}
    added = {"type": "ADDED", "object": {**ssd("a"), "metadata": {
        "name": "a", "namespace": "default", "resourceVersion": "5"}}}
    assert kube_routes.apply_event(store, added) == "5"
    assert list(store) == ["default/a"]
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    assert kube_routes.apply_event(store, bookmark) == "9"
    deleted = {"type": "DELETED", "object": {"metadata": {
        "name": "a", "namespace": "default", "resourceVersion": "10"}}}
    assert kube_routes.apply_event(store, deleted) == "10"
    assert store == {}
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410}}
    assert kube_routes.apply_event(store, gone) is None

"""Two writers per resource, no lost updates: the reconcile and the SLO loop each write only the
status keys, condition types and policy fields they own, merged into a fresh read under a
resourceVersion precondition, and a 409 Conflict retries from a fresh read. kmock neither
bumps resourceVersion nor enforces preconditions, so these run against
`tests.kits.apiserver.MemoryApiServer`, which does."""

from __future__ import annotations

import json
from typing import Any

import kopf
import pytest

from specserve_contract import API_VERSION, KIND, POLICY_KEY
from specserve_engine.policy.params import Policy
from specserve_operator import diff, names, reconcile, slo_loop
from specserve_operator import manifests as m
from specserve_operator import status as st
from specserve_operator.spec import CONDITION_TYPES, parse_spec
from tests.kits.apiserver import MemoryApiServer

OWNER = names.Owner("chat", "ns1", "uid-chat")
SPEC = parse_spec({"model": {"target": "tiny", "draft": "tiny"}, "speculation": {"kMax": 5}})
EDITED = parse_spec({"model": {"target": "tiny", "draft": "tiny"}, "speculation": {"kMax": 7}})


class Log:
    def info(self, *_: Any) -> None: ...
    def warning(self, *_: Any) -> None: ...


@pytest.fixture(autouse=True)
def _no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """No kopf operator runs here: events go nowhere."""
    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)


def _server_with_policy(spec: Any = SPEC) -> MemoryApiServer:
    api = MemoryApiServer()
    api.put(diff.applied(m.configmap(OWNER, spec, m.policy_from_spec(spec, 1))))
    api.put({"apiVersion": API_VERSION, "kind": KIND,
             "metadata": {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid},
             "spec": {}, "status": {}})
    return api


def _stored_policy(api: MemoryApiServer) -> dict[str, Any]:
    return json.loads(api.objects[("ConfigMap", names.configmap_name(OWNER))]["data"][POLICY_KEY])


def _tuned(policy: Policy) -> Policy:
    return policy.model_copy(update={"tpot_headroom": 0.7, "version": policy.version + 1})


def test_a_spec_edit_racing_a_tuning_write_keeps_both() -> None:
    """The SLO loop read v1; the reconcile stores the edit (kMax 7, v2) before the SLO loop
    writes: the tuning write is refused (409), redone on v2, and stores v3 with both."""
    api = _server_with_policy()
    api.before_write.append(
        lambda *_: reconcile._ensure_policy(api, OWNER, EDITED, {}, Log()))
    stored = slo_loop.update_policy_sync(
        api, OWNER, slo_loop.tuned_onto(_tuned(Policy.model_validate(_stored_policy(api)))))
    assert api.conflicts == 1
    policy = _stored_policy(api)
    assert (policy["version"], policy["k_max"], policy["tpot_headroom"]) == (3, 7, 0.7)
    assert stored is not None and stored.model_dump(mode="json") == policy


def test_a_tuning_write_racing_a_spec_edit_keeps_both() -> None:
    """The reconcile read v1; the SLO loop stores a tuned v2 before the reconcile writes the
    edit: the reconcile's write is refused (409), redone on v2: v3 keeps the tuning."""
    api = _server_with_policy()
    tuned = _tuned(Policy.model_validate(_stored_policy(api)))
    api.before_write.append(
        lambda *_: slo_loop.update_policy_sync(api, OWNER, slo_loop.tuned_onto(tuned)))
    version = reconcile._ensure_policy(api, OWNER, EDITED, {}, Log())
    assert api.conflicts == 1
    policy = _stored_policy(api)
    assert (version, policy["version"], policy["k_max"], policy["tpot_headroom"]) == (
        3, 3, 7, 0.7)


def test_a_re_version_racing_a_spec_edit_stays_above_both() -> None:
    api = _server_with_policy()
    api.before_write.append(
        lambda *_: reconcile._ensure_policy(api, OWNER, EDITED, {}, Log()))
    stored = slo_loop.update_policy_sync(api, OWNER, slo_loop.versioned_above(4))
    assert api.conflicts == 1 and stored is not None
    assert (stored.version, stored.k_max) == (5, 7)
    assert _stored_policy(api)["version"] == 5


def test_an_unchanged_policy_is_not_rewritten() -> None:
    api = _server_with_policy()
    assert reconcile._ensure_policy(api, OWNER, SPEC, {}, Log()) == 1
    tuned = Policy.model_validate(_stored_policy(api))
    assert slo_loop.update_policy_sync(api, OWNER, slo_loop.tuned_onto(tuned)) is not None
    assert api.writes == []


# ------------------------------------------------------------------------------- .status


def _conds(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions") or []}


def _status(api: MemoryApiServer) -> dict[str, Any]:
    return api.objects[(KIND, OWNER.name)]["status"]


DEPLOYMENT = {"spec": {"replicas": 1},
              "status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}}


def _slo_status(attainment: float, stamp: str) -> dict[str, Any]:
    return st.status_dict(
        slo_snapshot={"state": "ok", "attainment": attainment, "time": stamp},
        policy={"version": 1, "applied_pods": 1, "pushed_at": stamp},
        conditions=st.merge_conditions(None, [
            st.slo_condition(SPEC, {"state": "ok", "attainment": attainment}),
            st.policy_condition(1, 1, 1, names.configmap_name(OWNER)),
            st.no_data_condition({"state": "ok", "podsScraped": 2})], stamp),
    )


def _reconciled(fresh: dict[str, Any], stamp: str = "T1") -> dict[str, Any]:
    return st.running_status(SPEC, OWNER, DEPLOYMENT, 1, fresh, stamp)


def test_each_writer_replaces_only_its_own_conditions() -> None:
    """Each writer works from a stale view (what the watch last delivered, before the other
    wrote): neither undoes the other's conditions or keys."""
    api = _server_with_policy()
    stale = api.get(API_VERSION, KIND, "ns1", OWNER.name)
    reconcile.write_status(api, OWNER, st.RECONCILE, _reconciled, stale)
    assert _conds(_status(api)) == {"Ready": "True", "Degraded": "False", "Progressing": "False",
                                    "SLOMet": "Unknown", "PolicyApplied": "Unknown",
                                    "NoData": "Unknown", "NameConflict": "False",
                                    "RouteConflict": "False"}
    # The SLO loop, from the view before the reconcile wrote (409 on it, then a fresh read).
    reconcile.write_status(api, OWNER, st.SLO_LOOP, lambda _: _slo_status(0.97, "T2"), stale)
    assert api.conflicts == 1
    after_slo = _conds(_status(api))
    assert (after_slo["Ready"], after_slo["SLOMet"], after_slo["PolicyApplied"],
            after_slo["NoData"]) == ("True", "True", "True", "False")
    # The status timer again, from the view before the SLO loop wrote: its own computation of
    # SLOMet/PolicyApplied (from the stale snapshot) must not win.
    stale_after_reconcile = {"metadata": {"resourceVersion": "0"},
                             "status": {"phase": "Running"}}
    reconcile.write_status(api, OWNER, st.RECONCILE, _reconciled, stale_after_reconcile)
    final = _status(api)
    assert _conds(final)["SLOMet"] == "True" and _conds(final)["PolicyApplied"] == "True"
    assert _conds(final)["NoData"] == "False"
    assert final["slo"] == "tpot<=100ms 97%/90%"  # from the fresh snapshot, not the stale one
    assert final["sloSnapshot"]["attainment"] == 0.97
    assert [c["type"] for c in final["conditions"]] == list(CONDITION_TYPES)


def test_a_conflict_on_status_retries_from_a_fresh_read() -> None:
    api = _server_with_policy()
    seen = api.get(API_VERSION, KIND, "ns1", OWNER.name)
    api.before_write.append(lambda *_: api.patch(
        API_VERSION, KIND, "ns1", OWNER.name, {"status": _slo_status(0.5, "T0")}, "status"))
    sent = reconcile.write_status(api, OWNER, st.RECONCILE, _reconciled, seen)
    assert api.conflicts == 1
    assert "sloSnapshot" not in sent and "policy" not in sent
    assert _conds(_status(api))["SLOMet"] == "False"  # 50% < 90%: the SLO loop's, kept
    assert _status(api)["slo"] == "tpot<=100ms 50%/90%"


def test_nothing_to_change_costs_no_api_call() -> None:
    api = _server_with_policy()
    reconcile.write_status(api, OWNER, st.RECONCILE, _reconciled)
    seen = api.get(API_VERSION, KIND, "ns1", OWNER.name)
    writes = len(api.writes)
    assert reconcile.write_status(api, OWNER, st.RECONCILE,
                                  lambda f: _reconciled(f, "T9"), seen) == {}
    assert len(api.writes) == writes


def test_the_other_writers_keys_are_only_initialised() -> None:
    fresh = {"policy": {"version": 3, "appliedPods": 2}, "slo": "x", "phase": "Progressing"}
    new = {"policy": {"version": 4, "appliedPods": 0}, "slo": "y", "phase": "Running"}
    assert st.owned_patch(st.RECONCILE, fresh, new) == {"slo": "y", "phase": "Running"}
    assert st.owned_patch(st.RECONCILE, {}, new) == new
    assert st.owned_patch(st.SLO_LOOP, fresh, new) == {"policy": new["policy"]}
    owned = {w.name: w.keys for w in st.WRITERS}
    assert not owned["reconcile"] & owned["slo-loop"]
    types = [t for w in st.WRITERS for t in w.conditions]
    assert sorted(types) == sorted(CONDITION_TYPES)

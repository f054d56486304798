"""The control port's rules (auth, validation, versioning), without HTTP."""

from __future__ import annotations

import json

from specserve_contract import ENV_CONTROL_TOKEN
from specserve_engine.policy import LogisticCalibration, ModelParams, Policy, TimingCoefficients
from specserve_engine.policy_store import PolicyStore

TOKEN = "s3cret"
AUTH = f"Bearer {TOKEN}"


def _store() -> PolicyStore:
    return PolicyStore(Policy(version=1), engine_k_max=5, token=TOKEN)


def _body(**fields: object) -> bytes:
    return json.dumps({"version": 2, **fields}).encode()


def test_valid_put_takes_effect() -> None:
    store = _store()
    reply = store.put(_body(mode="static", static_k=2), AUTH)
    assert reply.status == 200 and reply.body == {"version": 2, "changed": True}
    assert store.policy.mode == "static" and store.policy.static_k == 2


def test_missing_or_wrong_token_is_401() -> None:
    store = _store()
    for header in (None, "", "Bearer nope", f"Basic {TOKEN}", TOKEN):
        assert store.put(_body(), header).status == 401
    assert store.policy.version == 1


def test_no_token_configured_refuses_every_put() -> None:
    store = PolicyStore(Policy(), engine_k_max=5, token=None)
    reply = store.put(_body(), "Bearer ")
    assert reply.status == 401
    assert ENV_CONTROL_TOKEN in reply.body["error"]


def test_invalid_bodies_are_422_with_the_reason() -> None:
    store = _store()
    cases = {
        b"{not json": "not JSON",
        _body(k_max=-1): "k_max",
        _body(mode="turbo"): "mode",
        _body(slo={"tpot_seconds": 0}): "slo.tpot_seconds",
        _body(k_max=2, static_k=3): "static_k",
        _body(unknown_field=1): "unknown_field",
        _body(k_max=8): "exceeds this engine's maximum 5",
    }
    for body, needle in cases.items():
        reply = store.put(body, AUTH)
        assert reply.status == 422, body
        assert needle in reply.body["error"], (body, reply.body)
    assert store.policy.version == 1


def test_stale_version_is_409_and_resending_current_is_idempotent() -> None:
    store = _store()
    assert store.put(_body(static_k=2), AUTH).status == 200
    stale = store.put(json.dumps({"version": 1}).encode(), AUTH)
    assert stale.status == 409 and stale.body["current_version"] == 2
    conflicting = store.put(_body(static_k=1), AUTH)  # same version, different content
    assert conflicting.status == 409
    again = store.put(_body(static_k=2), AUTH)
    assert again.status == 200 and again.body["changed"] is False
    assert store.policy.static_k == 2


def test_get_reports_policy_and_engine_limits() -> None:
    reply = _store().get()
    assert reply.status == 200
    assert reply.body["policy"]["version"] == 1
    assert reply.body["engine"] == {"k_max": 5}


def test_unmeasured_model_keeps_the_engines_own() -> None:
    """A push carrying the built-in default model (empty source) changes only the knobs; a
    measured model (with a source) replaces the engine's."""
    profiled = ModelParams(target=TimingCoefficients(overhead_s=0.024, per_token_s=0.0076),
                           calibration=[LogisticCalibration(slope=0.5, intercept=1.9)],
                           source="profile specserve-profile.json")
    store = PolicyStore(Policy(version=1, model=profiled), engine_k_max=5, token=TOKEN)
    # The operator's first push: the same version and knobs, the default model.
    assert store.put(_body(version=1), AUTH).body == {"version": 1, "changed": False}
    assert store.put(_body(tpot_headroom=0.8), AUTH).status == 200
    assert store.policy.tpot_headroom == 0.8 and store.policy.model == profiled
    refitted = profiled.model_copy(update={"source": "operator refit x1.100"})
    assert store.put(_body(version=3, model=refitted.model_dump(mode="json")), AUTH).status == 200
    assert store.policy.model == refitted

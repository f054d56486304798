"""The CRD's schema version (issue #24: `helm upgrade` never upgraded the CRD): crdgen writes
specserve_contract.CRD_SCHEMA_VERSION into the CRD's annotation, the operator reads it at
start-up and refuses to run against a missing or older CRD, and a pin of each version's schema
makes a schema change without a version bump fail here."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from kopf._core.engines.activities import ActivityError

from specserve_contract import ANNOTATION_SCHEMA_VERSION, CRD_SCHEMA_VERSION
from specserve_operator import crd_schema, crdgen
from specserve_operator.kube_client import api_call
from tests.kits.crd_validation import CRD_PATH
from tests.kits.operator_kit import (
    CRDS,
    DEPLOYMENTS,
    create,
    eventually,
    install_crd,
    live,
    running_operator,
    ssd,
)

PINS = Path(__file__).resolve().parents[1] / "data" / "crd_schema_versions.json"
SPEC: dict[str, Any] = {"model": {"target": "org/target-1b", "draft": "org/draft-100m"}}


def _without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_without_descriptions(v) for v in node]
    return node


def schema_fingerprint(crd: dict[str, Any]) -> str:
    """What a schema version stands for: the served versions (schema, rules, defaults,
    subresources, printer columns), descriptions left out (they change `kubectl explain`
    only)."""
    versions = _without_descriptions(crd["spec"]["versions"])
    return hashlib.sha256(json.dumps(versions, sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()


def crd_at(version: str | None) -> dict[str, Any]:
    crd = copy.deepcopy(crdgen.crd())
    if version is None:
        del crd["metadata"]["annotations"][ANNOTATION_SCHEMA_VERSION]
    else:
        crd["metadata"]["annotations"][ANNOTATION_SCHEMA_VERSION] = version
    return crd


# ------------------------------------------------------------------------------- pure parts


def test_the_generated_crd_records_the_schema_version() -> None:
    import yaml

    crd = yaml.safe_load(CRD_PATH.read_text())
    assert crd["metadata"]["annotations"][ANNOTATION_SCHEMA_VERSION] == str(CRD_SCHEMA_VERSION)
    assert crd_schema.schema_version(crd) == CRD_SCHEMA_VERSION
    assert crd_schema.problem(crd) is None


def test_a_schema_change_needs_a_version_bump() -> None:
    """Schema-change discipline (docs/helm.md): change the CRD, bump CRD_SCHEMA_VERSION (in
    specserve_contract) and add the new fingerprint to tests/data/crd_schema_versions.json;
    the operator then refuses to start against the previous CRD until it is upgraded."""
    pins = json.loads(PINS.read_text())
    assert sorted(map(int, pins)) == list(range(1, CRD_SCHEMA_VERSION + 1))
    fingerprint = schema_fingerprint(crdgen.crd())
    assert pins[str(CRD_SCHEMA_VERSION)] == fingerprint, (
        f"the CRD's schema changed: bump specserve_contract.CRD_SCHEMA_VERSION to "
        f"{CRD_SCHEMA_VERSION + 1} and pin \"{CRD_SCHEMA_VERSION + 1}\": \"{fingerprint}\" in "
        f"{PINS.name} (and bump the chart's version)")
    assert len(set(pins.values())) == len(pins), "two versions with one schema"


@pytest.mark.parametrize(("annotation", "refused"), [
    (None, True), ("0", True), (str(CRD_SCHEMA_VERSION - 1), True), ("garbled", True),
    (str(CRD_SCHEMA_VERSION), False), (str(CRD_SCHEMA_VERSION + 1), False)])
def test_which_crds_the_operator_runs_against(annotation: str | None, refused: bool) -> None:
    why = crd_schema.problem(crd_at(annotation))
    assert (why is not None) == refused
    if refused:
        assert f"this operator needs {CRD_SCHEMA_VERSION}" in why
        assert "crds.install" in why and "kubectl apply" in why
    assert "not installed" in crd_schema.problem(None)


def test_the_check_is_one_call_the_rbac_grants_by_name() -> None:
    assert api_call("GET", crd_schema.CRD_PATH) == (
        "get", "apiextensions.k8s.io", "customresourcedefinitions")
    assert crd_schema.CRD_NAME == crdgen.CRD_NAME


# ----------------------------------------------------------------------- against the emulator


async def test_the_operator_refuses_to_start_against_an_older_crd(
        cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A CRD from before the schema version (what `helm upgrade` of a chart with crds/ left
    behind): the start-up handler fails permanently, kopf stops, and no resource is handled."""
    caplog.set_level(logging.INFO)
    install_crd(cluster, crd_at(None))
    await create(cluster, ssd("one", SPEC))
    with pytest.raises(ActivityError):
        async with running_operator() as runner:
            await eventually(lambda: runner.future.done(), 30)
    assert live(cluster, DEPLOYMENTS, "one") is None
    lines = [r.getMessage() for r in caplog.records if r.name == "specserve.operator"]
    assert [line for line in lines if line.startswith("refusing to start: ")] == [
        f"refusing to start: {crd_schema.problem(crd_at(None))}"]


async def test_the_operator_refuses_to_start_without_the_crd(cluster: Any) -> None:
    del cluster.objects[CRDS, None, crdgen.CRD_NAME]
    with pytest.raises(ActivityError):
        async with running_operator() as runner:
            await eventually(lambda: runner.future.done(), 30)


async def test_the_operator_starts_against_the_current_crd(cluster: Any) -> None:
    await create(cluster, ssd("one", SPEC))
    async with running_operator():
        await eventually(lambda: live(cluster, DEPLOYMENTS, "one"))


async def test_an_unreadable_crd_is_a_warning_not_a_refusal(
        cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    """RBAC without the grant (bring-your-own RBAC from before it): 403, and the operator runs."""
    install_crd(cluster, crd_at(None))  # would be refused if it could be read
    cluster[f"/apis/{CRDS}/{crdgen.CRD_NAME}"] << 403 << {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
        "code": 403, "message": "customresourcedefinitions is forbidden"}
    await create(cluster, ssd("one", SPEC))
    async with running_operator():
        await eventually(lambda: live(cluster, DEPLOYMENTS, "one"))
    assert any("cannot read the CRD" in r.getMessage() for r in caplog.records)

"""Pure tests: the pydantic spec, the generated CRD (drift, structure, schema) and bad specs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from specserve_contract import API_VERSION, KIND
from specserve_operator import crdgen
from specserve_operator.spec import DEFAULT_IMAGE, SpecError, parse_spec
from tests.kits.crd_validation import CRD_PATH, crd_schema, schema_errors
from tests.kits.malformed_specs import CASES, POD_TEMPLATE_CASES, VALID

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "specserve.yaml"


_crd_schema = crd_schema
_schema_errors = schema_errors


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, sub in (node.get("properties") or {}).items():
            out += _walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


# ------------------------------------------------------------------------------------ the CRD


def test_crd_file_matches_models() -> None:
    assert CRD_PATH.read_text() == crdgen.render(), (
        "crds/ is stale: run `python -m specserve_operator.crdgen`"
    )
    assert crdgen.main(["--check", "--output", str(CRD_PATH)]) == 0


def test_crd_check_flag_detects_drift(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crdgen.render().replace("kMax", "kmax"))
    assert crdgen.main(["--check", "--output", str(stale)]) == 1
    assert crdgen.main(["--output", str(stale)]) == 0
    assert crdgen.main(["--check", "--output", str(stale)]) == 0


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(yaml.safe_load(CRD_PATH.read_text()), "1.32", strict=True)


def test_crd_schema_is_structural() -> None:
    for path, node in _walk(_crd_schema()):
        assert "type" in node, f"{path or '<root>'} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"):
            assert banned not in node, f"{path}: {banned}"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert not isinstance(node.get("exclusiveMinimum"), int | float) or isinstance(
            node.get("exclusiveMinimum"), bool), path


def test_crd_names_subresources_and_columns() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "specservedeployments.specserve.io"
    assert spec["group"] == "specserve.io"
    assert spec["names"]["kind"] == "SpecServeDeployment"
    assert spec["names"]["shortNames"] == ["ssd"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["status"] == {}
    scale = version["subresources"]["scale"]
    paths = {p for p, _ in _walk(_crd_schema())}
    for key in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath"):
        assert scale[key] in paths, key
    by_path = dict(_walk(_crd_schema()))
    assert by_path[scale["specReplicasPath"]]["type"] == "integer"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert set(columns) >= {"Model", "Ready", "K", "SLO", "Age"}
    for name, json_path in columns.items():
        if name != "Age":
            assert json_path in paths, name


def test_crd_defaults_match_the_models() -> None:
    props = _crd_schema()["properties"]["spec"]["properties"]
    assert props["speculation"]["default"] == {}
    assert props["speculation"]["properties"]["kMax"]["default"] == 5
    assert props["speculation"]["properties"]["kMax"]["maximum"] == 16
    assert props["image"]["default"] == DEFAULT_IMAGE
    assert props["model"]["properties"]["draft"]["default"] == "none"
    assert props["replicas"]["x-kubernetes-validations"][0]["rule"] == "self.min <= self.max"
    status = _crd_schema()["properties"]["status"]
    assert all("default" not in node for _, node in _walk(status))


# --------------------------------------------------------------------------------- the models


def test_valid_spec_parses_with_defaults() -> None:
    parsed = parse_spec(copy.deepcopy(VALID))
    assert parsed.speculation.k_max == 5
    assert parsed.slo.tpot_p90_ms == 100
    assert parsed.image == DEFAULT_IMAGE
    assert parsed.metrics.service_monitor is True
    assert _schema_errors(VALID) == []


def test_spec_round_trips_through_camel_case() -> None:
    parsed = parse_spec(copy.deepcopy(VALID))
    dumped = parsed.model_dump(by_alias=True, exclude_none=True)
    assert dumped["speculation"]["kMax"] == 5
    assert parse_spec(dumped) == parsed


def test_spec_must_be_an_object() -> None:
    with pytest.raises(SpecError, match="spec: must be an object"):
        parse_spec("adaptive")


def test_mode_off_without_draft_is_valid() -> None:
    spec = {"model": {"target": "org/m"}, "speculation": {"mode": "off"}}
    assert parse_spec(spec).speculation.mode == "off"
    assert _schema_errors(spec) == []


def test_there_are_at_least_30_malformed_cases() -> None:
    assert len(CASES) >= 30
    assert len({case_id for case_id, *_ in ALL_CASES}) == len(ALL_CASES)


ALL_CASES = CASES + POD_TEMPLATE_CASES


@pytest.mark.parametrize(("spec", "message"), [(c[1], c[2]) for c in ALL_CASES],
                         ids=[c[0] for c in ALL_CASES])
def test_malformed_spec_is_rejected_with_a_clear_message(spec: Any, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert message in str(info.value), str(info.value)
    assert str(info.value).startswith("invalid spec: spec")


@pytest.mark.parametrize(("spec", "by_schema"), [(c[1], c[3]) for c in ALL_CASES],
                         ids=[c[0] for c in ALL_CASES])
def test_malformed_spec_against_the_crd_schema(spec: Any, by_schema: bool) -> None:
    """Schema-expressible rules are refused by the OpenAPI schema already; the cross-field ones
    by the CRD's CEL rules (test_operator_cel.py) and the operator; unknown fields (pruned by
    the API server) by the operator only."""
    errors = _schema_errors(spec)
    if by_schema:
        assert errors, "the CRD schema should refuse this spec"
    else:
        assert errors == [], "a cross-field rule the schema cannot express"


# ---------------------------------------------------------------------------------- examples


def _example_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(EXAMPLES.read_text()) if d]


def test_examples_are_valid_resources() -> None:
    docs = [d for d in _example_docs() if d["kind"] == KIND]
    assert len(docs) >= 2
    modes = set()
    for doc in docs:
        assert doc["apiVersion"] == API_VERSION
        parsed = parse_spec(doc["spec"])
        modes.add(parsed.resources.gpu > 0)
        assert _schema_errors(doc["spec"]) == [], doc["metadata"]["name"]
    assert modes == {True, False}, "a CPU example and a GPU example"

"""The CRD's CEL rules (`x-kubernetes-validations`, from spec.py's `cel_rules`) evaluated with a
CEL implementation (cel-python) against the malformed corpus: the API server (OpenAPI schema
and CEL) must refuse a spec exactly when the operator's pydantic models do, and a cross-field
rule must say what the validator says.

What only pydantic can catch, and why (PYDANTIC_ONLY): unknown fields. The CRD's structural
schema makes the API server prune them before any rule runs (or, with kubectl's default
strict field validation, refuse the request with "unknown field"): neither the schema nor a
CEL rule ever sees them, so the operator's `extra="forbid"` is the only check that names them.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from specserve_contract import KIND
from specserve_operator.spec import SpecError, parse_spec
from tests.kits.crd_validation import (
    admitted,
    cel_failures,
    failing_rules,
    refused,
    rules,
    schema_errors,
    spec_schema,
)
from tests.kits.malformed_specs import CASES, VALID

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "specserve.yaml"

PYDANTIC_ONLY = {
    "unknown-field": "pruned (or refused by kubectl's strict field validation) before CEL",
    "profile-builtin": "a removed field: unknown now, pruned like any other",
}


def pydantic_problems(spec: Any) -> list[str]:
    try:
        parse_spec(copy.deepcopy(spec))
    except SpecError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(("case_id", "spec", "by_schema"), [(c[0], c[1], c[3]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_the_api_server_refuses_exactly_what_the_operator_refuses(
        case_id: str, spec: Any, by_schema: bool) -> None:
    assert pydantic_problems(spec), "the corpus holds specs the operator refuses"
    if case_id in PYDANTIC_ONLY:
        assert not refused(spec), "pruned by the API server, so only the operator sees it"
        return
    assert refused(spec)
    assert bool(schema_errors(spec)) == by_schema
    if not by_schema:  # a cross-field rule: CEL says exactly what the validator says
        assert cel_failures(spec) == pydantic_problems(spec)


VALID_EDGES: list[tuple[str, dict[str, Any]]] = [
    ("valid", VALID),
    ("defaults-only", {"model": {"target": "org/m", "draft": "org/d"}}),
    ("mode-off-no-draft", {"model": {"target": "org/m"}, "speculation": {"mode": "off"}}),
    ("tiny-draft-is-tiny-target", {"model": {"target": "tiny", "draft": "tiny"}}),
    ("static-k-equals-k-max", {**VALID, "speculation": {"mode": "static", "kMax": 4,
                                                        "staticK": 4}}),
    ("static-k-above-k-max-when-adaptive", {**VALID, "speculation": {"kMax": 2, "staticK": 3}}),
    ("replicas-at-the-bounds", {**VALID, "replicas": {"min": 0, "max": 3, "initial": 3}}),
    ("scale-to-zero", {**VALID, "replicas": {"min": 0, "max": 2, "initial": 0},
                       "autoscaling": {"scaleToZeroAfterSeconds": 600}}),
    ("scale-to-zero-null", {**VALID, "autoscaling": {"scaleToZeroAfterSeconds": None}}),
    ("ttft-p90-equals-p99", {**VALID, "slo": {"ttftP90Ms": 5000, "ttftP99Ms": 5000}}),
    ("recreate-with-no-surge", {**VALID, "rollout": {"strategy": "Recreate", "maxSurge": 0,
                                                     "maxUnavailable": 0}}),
    ("toleration-exists-empty-value", {**VALID, "resources": {"tolerations": [
        {"key": "gpu", "operator": "Exists", "value": ""}]}}),
    ("toleration-exists-null-value", {**VALID, "resources": {"tolerations": [
        {"key": "gpu", "operator": "Exists", "value": None}]}}),
    ("toleration-seconds-no-execute", {**VALID, "resources": {"tolerations": [
        {"key": "k", "effect": "NoExecute", "tolerationSeconds": 30}]}}),
    # Flags that only start like reserved ones.
    ("vllm-args-look-alikes", {**VALID, "vllmArgs": ["--model-impl=vllm", "--portal", "9000",
                                                     "--max-model-len=4096",
                                                     "--data-parallel-size-local=1", "-dpx"]}),
    ("autoscaling-external", {**VALID, "autoscaling": {"mode": "external"}}),
]


def _example_specs() -> list[tuple[str, dict[str, Any]]]:
    docs = [d for d in yaml.safe_load_all(EXAMPLES.read_text()) if d and d["kind"] == KIND]
    return [(f"example-{d['metadata']['name']}", d["spec"]) for d in docs]


@pytest.mark.parametrize(("case_id", "spec"), VALID_EDGES + _example_specs(),
                         ids=[c[0] for c in VALID_EDGES + _example_specs()])
def test_what_the_operator_accepts_the_api_server_accepts(case_id: str, spec: Any) -> None:
    assert pydantic_problems(spec) == []
    assert schema_errors(spec) == []
    assert cel_failures(spec) == []


def test_kubectl_scale_beyond_max_is_refused_by_the_api_server() -> None:
    """The scale subresource writes spec.replicas.initial and the API server validates the
    whole object, CEL included: `kubectl scale ssd/NAME --replicas=5` with max 2."""
    stored = admitted(copy.deepcopy(VALID), spec_schema())
    assert cel_failures(stored) == []
    scaled = copy.deepcopy(stored)
    scaled["replicas"]["initial"] = 5
    assert cel_failures(scaled) == ["spec.replicas: initial (5) must lie between min (1) and "
                                    "max (2)"]
    assert schema_errors(scaled) == []  # only the rule sees it
    scaled["replicas"]["initial"] = 0  # below min 1
    assert cel_failures(scaled) == ["spec.replicas: initial (0) must lie between min (1) and "
                                    "max (2)"]


def test_every_cross_field_rule_is_exercised_by_the_corpus() -> None:
    hit = set()
    for _, spec, _, by_schema in CASES:
        if not by_schema and not schema_errors(spec):
            hit.update(rule["rule"] for _, rule, _ in failing_rules(spec))
    assert hit == {rule["rule"] for _, _, rule in rules()}


def _referenced(node: dict[str, Any], expression: str) -> list[tuple[str, dict[str, Any]]]:
    """Schema nodes of the `self.a.b` paths an expression reads (macro variables are lists'
    items, reached through the list itself)."""
    out = []
    for ref, call in set(re.findall(r"self((?:\.\w+)+)(\()?", expression)):
        keys = ref.strip(".").split(".")[: -1 if call else None]  # a.b.all( -> a.b
        sub = node
        for key in keys:
            sub = sub["properties"][key]
        out.append((ref, sub))
    return out


@pytest.mark.parametrize("index", range(len(rules())),
                         ids=[f"{p}:{r['rule'][:30]}" for p, _, r in rules()])
def test_rules_stay_within_the_api_servers_cost_budget(index: int) -> None:
    """The API server estimates each rule's cost from the schema at CRD creation and refuses
    rules over budget: every string a rule reads is bounded (maxLength or enum) and every list
    bounded (maxItems, items bounded). No rule is a transition rule (no oldSelf) and none
    needs the quantity() library (Kubernetes >= 1.29 suffices)."""
    path, node, rule = rules()[index]
    for expr in filter(None, (rule["rule"], rule.get("messageExpression"))):
        assert "oldSelf" not in expr and "quantity(" not in expr
        for ref, sub in _referenced(node, expr):
            if sub["type"] == "string":
                assert "maxLength" in sub or "enum" in sub, f"{path}{ref} is unbounded"
            if sub["type"] == "array":
                assert "maxItems" in sub, f"{path}{ref} has no maxItems"
                items = sub["items"]
                assert items["type"] != "string" or "maxLength" in items, f"{path}{ref}[]"

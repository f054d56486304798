"""What the API server does with a SpecServeDeployment before storing it, offline: the CRD's
OpenAPI schema (jsonschema) and its CEL rules (`x-kubernetes-validations`, evaluated with
cel-python, a CEL implementation), on the object as the API server would see it.

The order is the API server's: unknown fields are pruned, nulls of non-nullable fields
dropped, defaults filled (nested defaults too), then the schema and every CEL rule are checked.
A rule sees `self` with null-valued fields absent ("Null valued fields are treated as absent
fields in CEL expressions": the ValidationRule API reference). A failing rule's message is
its messageExpression's value when that evaluates to a non-empty string, else its message.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes

from specserve_contract import API_VERSION, KIND
from specserve_operator import crdgen

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / crdgen.CRD_FILE
RULES = "x-kubernetes-validations"


def crd_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the CRD file in crds/ (what `kubectl apply` installs)."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def spec_schema() -> dict[str, Any]:
    return crd_schema()["properties"]["spec"]


def _jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 (CRD) -> JSON Schema draft 4: `nullable` becomes a null type."""
    if isinstance(node, list):
        return [_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def schema_errors(spec: Any) -> list[str]:
    """What the CRD's OpenAPI schema refuses in a resource with this spec (no CEL)."""
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "x"}, "spec": spec}
    validator = jsonschema.Draft4Validator(_jsonschema(crd_schema()))
    return [e.message for e in validator.iter_errors(doc)]


def admitted(value: Any, schema: dict[str, Any]) -> Any:
    """`value` pruned and defaulted as the API server stores it (structural schema)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        if props is not None:
            out = {k: v for k, v in value.items()
                   if k in props and (v is not None or props[k].get("nullable"))}
            for key, sub in props.items():
                if key not in out and "default" in sub:
                    out[key] = copy.deepcopy(sub["default"])
            return {k: admitted(v, props[k]) for k, v in out.items()}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {k: admitted(v, extra) for k, v in value.items()}
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [admitted(v, schema["items"]) for v in value]
    return value


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


@functools.cache
def _program(expression: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expression))


def evaluate(expression: str, self_value: Any) -> Any:
    """One CEL expression with `self` bound; a CELEvalError is returned, not raised."""
    return _program(expression).evaluate({"self": celpy.json_to_cel(_without_nulls(self_value))})


def _walk(value: Any, schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any], Any]]:
    """(path, rule, value) of every rule that applies somewhere in `value`."""
    out = [(path, rule, value) for rule in schema.get(RULES, [])]
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and value[key] is not None:
                out += _walk(value[key], sub, f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                out += _walk(item, extra, f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += _walk(item, schema["items"], f"{path}[{i}]")
    return out


class RuleError(AssertionError):
    """A rule that did not evaluate to a bool: a bug in the rule (the API server would refuse
    the request with the evaluation error)."""


def _failure(rule: dict[str, Any], path: str, run: Any) -> str | None:
    """The message of `rule` when it fails (None when it holds), as the API server words it:
    a one-line messageExpression result, else `message`, else the rule itself."""
    result = run(rule["rule"])
    if not isinstance(result, celtypes.BoolType):
        raise RuleError(f"{path}: {rule['rule']!r} gave {result!r}")
    if result:
        return None
    message = rule.get("message") or f"failed rule: {rule['rule']}"
    if rule.get("messageExpression"):
        text = run(rule["messageExpression"])
        if isinstance(text, str) and text.strip() and "\n" not in text:
            message = str(text)
    return message


def failing_rules(spec: Any) -> list[tuple[str, dict[str, Any], str]]:
    """(path, rule, message) of every CEL rule the admitted spec fails."""
    schema = spec_schema()
    value = admitted(spec, schema)
    failures = []
    for path, rule, self_value in _walk(value, schema, "spec"):
        message = _failure(rule, path, lambda expr, v=self_value: evaluate(expr, v))
        if message is not None:
            failures.append((path, rule, message))
    return failures


def cel_failures(spec: Any) -> list[str]:
    """`path: message` of every CEL rule the admitted spec fails (the API server's wording is
    `path: Invalid value: "object": message`)."""
    return [f"{path}: {message}" for path, _, message in failing_rules(spec)]


def refused(spec: Any) -> bool:
    """Would the API server refuse a resource with this spec (schema or CEL)? Rules are only
    evaluated on a spec the schema accepts (their types are the schema's)."""
    return bool(schema_errors(spec)) or bool(cel_failures(spec))


# ------------------------------------------------------------------ rules at the root (names)
# Kubernetes lets a rule at the root of a CRD's schema (and only there) read apiVersion, kind,
# metadata.name and metadata.generateName (the ValidationRule API reference, apiextensions/v1
# types_jsonschema.go; apiextensions-apiserver schema/cel/model WithTypeAndObjectMeta), and
# runs it on every create and update of the object, the status subresource included.
ROOT_METADATA = frozenset({"name", "generateName"})


def resource_rules() -> list[dict[str, Any]]:
    """The rules at the root of the CRD's schema."""
    return list(crd_schema().get(RULES, []))


def _bind_old_self(rule: dict[str, Any], expression: str, update: bool) -> str:
    """`oldSelf` as Kubernetes binds it in a rule with `optionalOldSelf: true` (KEP-4008,
    types_jsonschema.go ValidationRule.OptionalOldSelf): an optional, empty on create, holding
    the stored object on update. cel-python 0.5 has no optional types, so the one form these
    rules use, `oldSelf.hasValue()`, is replaced by its value; any other use of oldSelf (or a
    transition rule without optionalOldSelf, which a create never runs) is not modelled."""
    if "oldSelf" not in expression:
        return expression
    if not rule.get("optionalOldSelf"):
        raise RuleError(f"a transition rule without optionalOldSelf: {expression!r}")
    bound = expression.replace("oldSelf.hasValue()", "true" if update else "false")
    if "oldSelf" in bound:
        raise RuleError(f"oldSelf other than oldSelf.hasValue(): {expression!r}")
    return bound


def resource_failures(name: str, spec: Any, *, update: bool = False) -> list[str]:
    """Messages of the root rules that refuse a resource called `name` with this spec: on
    create, or (`update`) on any write to one that exists already (a status patch, finalizer
    removal: names are immutable, so the stored object has the same name)."""
    obj = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name},
           "spec": admitted(spec, spec_schema())}
    failures = []
    for rule in resource_rules():
        message = _failure(rule, "<root>", lambda expr, r=rule: evaluate(
            _bind_old_self(r, expr, update), obj))
        if message is not None:
            failures.append(message)
    return failures


def rules() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(schema path, the node, one rule) for every rule in the spec's schema."""
    out = []

    def visit(node: dict[str, Any], path: str) -> None:
        out.extend((path, node, rule) for rule in node.get(RULES, []))
        for key, sub in (node.get("properties") or {}).items():
            visit(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            visit(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            visit(node["additionalProperties"], f"{path}{{}}")

    visit(spec_schema(), "spec")
    return out

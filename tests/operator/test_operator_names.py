"""Names that the CRD's schema accepts but that break the children (issue #24): the API server
takes any DNS-1123 subdomain as a custom resource's name, but the operator names the engine
Service after the resource, and a Service name must be a DNS-1035 label. The CRD's root rules
(spec.RESOURCE_RULES, generated into crds/) refuse such names at `kubectl apply`, evaluated
here with cel-python (tests/kits/crd_validation.py) as the API server runs them: on create
only (`optionalOldSelf`), so a resource created before the rules existed can still be
updated and deleted.

The Kubernetes rules, from apimachinery (pkg/util/validation/validation.go):
- IsDNS1035Label: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters; ValidateServiceName
  (pkg/apis/core/validation) applies it to every Service name;
- IsValidLabelValue: at most 63 characters (the resource's name is the
  `app.kubernetes.io/instance` label value of every child);
- IsDNS1123Subdomain: what the API server checks a custom resource's own name with
  (`qwen2.5-7b` and `7b-chat` pass it).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

import specserve_contract as contract
from specserve_operator import manifests as m
from specserve_operator import names
from specserve_operator import spec as s
from tests.kits.crd_validation import (
    ROOT_METADATA,
    crd_schema,
    resource_failures,
    resource_rules,
)
from tests.kits.malformed_specs import VALID

# apimachinery's regular expressions, as written there.
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_1123_SUBDOMAIN = re.compile(rf"{DNS_1123_LABEL.pattern}(\.{DNS_1123_LABEL.pattern})*")


def is_dns1035_label(value: str) -> bool:
    return len(value) <= 63 and DNS_1035_LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and DNS_1123_SUBDOMAIN.fullmatch(value) is not None


def children(name: str) -> list[dict[str, Any]]:
    owner = names.Owner(name=name, namespace="ns", uid="u")
    spec = s.parse_spec({"model": {"target": "tiny", "draft": "tiny"}})
    return [m.deployment(owner, spec), m.service(owner, spec), m.secret(owner, spec, "t"),
            m.configmap(owner, spec, m.policy_from_spec(spec, 1)),
            m.servicemonitor(owner, spec), m.disruption_budget(owner, spec)]


def children_problems(name: str) -> list[str]:
    """What the API server would refuse among the children of a resource called `name`: every
    child's name a DNS-1035 label (the Service's must be; the others are kept to it too, so
    that any of them can be a label value or a Service), every label value <= 63."""
    problems = []
    for child in children(name):
        meta = child["metadata"]
        if not is_dns1035_label(meta["name"]):
            problems.append(f"{child['kind']} {meta['name']!r}")
        for key, value in meta.get("labels", {}).items():
            if len(value) > 63:
                problems.append(f"{child['kind']} label {key}")
    return problems


LONGEST = "a" * s.NAME_MAX_LENGTH
# Names the CRD's schema used to accept (DNS-1123 subdomains) that break the children.
BREAKING = ["qwen2.5-7b", "7b-chat", "a" * (s.NAME_MAX_LENGTH + 1), "a" * 63, "llama.3"]
FINE = ["tiny", "qwen2-5-7b", "chat-7b", "a", LONGEST, "m0"]


def test_the_longest_suffix_is_the_one_the_operator_appends() -> None:
    """Every child is named NAME or NAME + a suffix (contract); the longest is -control."""
    for child in s.CHILD_NAMES:
        assert child("abc").startswith("abc")
    assert s.NAME_SUFFIX_MAX_LENGTH == len("-control") == 8
    assert s.NAME_MAX_LENGTH == 55
    produced = {c["metadata"]["name"] for c in children("abc")}
    assert produced == {child("abc") for child in s.CHILD_NAMES}


@pytest.mark.parametrize("name", BREAKING)
def test_names_that_break_the_children_are_refused_on_create(name: str) -> None:
    assert is_dns1123_subdomain(name), "the API server takes it as a custom resource's name"
    assert children_problems(name), "and a child of it would be refused"
    assert resource_failures(name, VALID) == s.name_problems(name) != []


@pytest.mark.parametrize("name", FINE)
def test_names_whose_children_are_valid_are_accepted(name: str) -> None:
    assert children_problems(name) == []
    assert resource_failures(name, VALID) == s.name_problems(name) == []


def test_the_messages_say_what_is_wrong() -> None:
    assert resource_failures("qwen2.5-7b", VALID) == [
        'metadata.name "qwen2.5-7b" is not a DNS-1035 label: it names the engine Service, so '
        "it must start with a lowercase letter, hold only lowercase letters, digits and "
        "hyphens, and end with a letter or digit"]
    assert resource_failures("a" * 60, VALID) == [
        "metadata.name must be at most 55 characters, not 60: the operator names a child "
        "NAME-control, and the name of every child must stay a DNS label of at most 63"]
    assert len(resource_failures("7" + "b" * 60, VALID)) == 2


def test_existing_resources_with_such_names_can_still_be_written() -> None:
    """A root rule runs on every write (status patches, kopf's finalizer removal), and
    ratcheting never spares the root; a rule without the create-only guard would make a
    resource created before the CRD upgrade impossible to update or delete."""
    for name in BREAKING:
        assert resource_failures(name, VALID, update=True) == []
    for rule in resource_rules():
        assert rule["optionalOldSelf"] is True
        assert rule["rule"].startswith("oldSelf.hasValue() || ")


def test_root_rules_read_only_what_the_root_exposes_and_are_bounded() -> None:
    """Only metadata.name and metadata.generateName are visible to CEL (WithTypeAndObjectMeta);
    the CRD declares their maxLength so that the API server's cost estimate is bounded (an
    unbounded string is estimated at the request size limit, ~3 MB)."""
    schema = crd_schema()
    metadata = schema["properties"]["metadata"]
    assert set(metadata["properties"]) == ROOT_METADATA
    for field in ROOT_METADATA:
        assert metadata["properties"][field] == {"type": "string", "maxLength": s.NAME_LIMIT}
    rules = resource_rules()
    assert rules == s.RESOURCE_RULES and len(rules) == 2
    for rule in rules:
        for expr in (rule["rule"], rule["messageExpression"]):
            assert set(re.findall(r"self\.metadata\.(\w+)", expr)) <= ROOT_METADATA
            assert not re.findall(r"self\.(?!metadata\.)\w+", expr)


def test_the_examples_are_named_validly() -> None:
    import yaml

    from tests.operator.test_operator_cel import EXAMPLES

    for doc in yaml.safe_load_all(EXAMPLES.read_text()):
        if doc and doc["kind"] == contract.KIND:
            assert s.name_problems(doc["metadata"]["name"]) == []


def test_a_name_the_children_cannot_carry_is_refused_before_any_child(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A CRD installed without the name rules (an older chart) admits `qwen2.5-7b`: the
    operator refuses it itself (phase Invalid, the rule's message), and creates no child, so
    no GPU pod starts for a resource whose Service would be refused."""
    from specserve_contract import API_VERSION, KIND
    from specserve_operator import reconcile
    from tests.kits.apiserver import MemoryApiServer

    class Log:
        def info(self, *_: object) -> None: ...
        def warning(self, *_: object) -> None: ...

    monkeypatch.setattr(reconcile.kopf, "warn", lambda *_, **__: None)
    monkeypatch.setattr(reconcile.kopf, "event", lambda *_, **__: None)
    api = MemoryApiServer(defaulting=True)
    name = "qwen2.5-7b"
    api.put({"apiVersion": API_VERSION, "kind": KIND,
             "metadata": {"name": name, "namespace": "prod", "uid": "u", "generation": 1},
             "spec": VALID, "status": {}})
    body = api.get(API_VERSION, KIND, "prod", name)
    result = reconcile.reconcile(api, body, body["metadata"], body["status"], "prod", name, "u",
                                 None, Log())  # type: ignore[arg-type]
    assert result == "invalid"
    status = api.objects[(KIND, name)]["status"]
    assert status["phase"] == "Invalid"
    assert "DNS-1035" in status["message"]
    assert set(k for k, _ in api.objects) == {KIND}

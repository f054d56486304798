"""Metric names are a wire contract: the exporters, the contract module and the Helm chart agree.

- `specserve_contract.metrics` holds exactly the names pinned here (a rename is a visible diff);
- every metric the engine, the gateway and the operator register is one of them, of the type
  its name promises (a counter's name ends in `_total`);
- every metric name in the chart (the dashboard's queries, templates, values) is a series the
  exporters expose or a vLLM metric the contract lists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from specserve_contract import metrics as names
from specserve_engine.vllm.exported_metrics import SpecServeMetrics
from specserve_gateway.app import Gateway
from specserve_gateway.routing import RouteTable
from specserve_gateway.sources import StaticSource
from specserve_operator import metrics as operator_metrics

CHART = Path(__file__).resolve().parents[1] / "charts" / "specserve"

# The wire values. Changing one breaks dashboards and users' rules: change it here on purpose.
PINNED = {
    "specserve_speculative_k", "specserve_speculative_k_last", "specserve_request_k",
    "specserve_batch_size", "specserve_policy_version", "specserve_policy_mode_info",
    "specserve_step_time_predicted_seconds", "specserve_step_time_observed_seconds",
    "specserve_request_tpot_predicted_seconds", "specserve_accepted_tokens_predicted_total",
    "specserve_accepted_tokens_observed_total", "specserve_draft_tokens_verified_total",
    "specserve_draft_tokens_trimmed_total", "specserve_goodput_estimate_tokens_per_second",
    "specserve_steps_total", "specserve_steps_by_batch_total",
    "specserve_steps_speculation_off_total", "specserve_steps_with_prefill_total",
    "specserve_drafts_stopped_early",
    "specserve_model_refits_total",
    "specserve_gateway_requests_total", "specserve_gateway_outstanding_requests",
    "specserve_gateway_resumes_total", "specserve_gateway_resume_failures_total",
    "specserve_gateway_resume_seconds", "specserve_gateway_held_requests",
    "specserve_gateway_holds_total", "specserve_gateway_route_conflicts",
    "specserve_operator_reconciles_total", "specserve_operator_slo_loop_seconds",
    "specserve_operator_slo_loop_failures_total", "specserve_operator_policy_pushes_total",
    "specserve_operator_api_calls_total", "specserve_operator_desired_replicas",
    "specserve_operator_slo_no_data", "specserve_operator_slo_no_data_passes_total",
    "vllm:time_to_first_token_seconds", "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds", "vllm:request_generation_tokens",
    "vllm:request_prompt_tokens", "vllm:num_requests_running", "vllm:num_requests_waiting",
    "vllm:generation_tokens_total", "vllm:spec_decode_num_drafts_total",
    "vllm:spec_decode_num_draft_tokens_total", "vllm:spec_decode_num_accepted_tokens_total",
}
# Python packages, not metrics (the chart starts `python -m specserve_gateway`, ...).
PACKAGES = {"specserve_contract", "specserve_engine", "specserve_gateway", "specserve_operator",
            "specserve_sim"}
METRIC_WORD = re.compile(r"(?<![\w:])(?:vllm:[A-Za-z_][\w:]*|specserve_\w+)")


def contract_names() -> set[str]:
    return {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}


def registries() -> dict[str, CollectorRegistry]:
    gateway = Gateway(StaticSource(RouteTable.from_mapping({})))
    return {"engine": SpecServeMetrics().registry, "gateway": gateway.registry,
            "operator": operator_metrics.REGISTRY}


def exported() -> dict[str, str]:
    """PromQL name (a counter's with `_total`) -> type, of every metric the exporters register."""
    out: dict[str, str] = {}
    for registry in registries().values():
        for family in registry.collect():
            name = family.name + "_total" if family.type == "counter" else family.name
            out[name] = family.type
    return out


def series(name: str, kind: str) -> set[str]:
    """The series names a metric's samples carry (`_created` left out: nothing reads it)."""
    return {f"{name}{s}" for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}


def known_series() -> set[str]:
    out = {s for name, kind in exported().items() for s in series(name, kind)}
    vllm = {v for v in contract_names() if v.startswith("vllm:")}
    for name in vllm:
        out |= series(name, "histogram" if name in names.VLLM_HISTOGRAMS else "other")
    return out


def chart_words(text: str) -> set[str]:
    """Metric-like words of a chart file, without packages and wildcards (`specserve_*_total`)."""
    found = set()
    for m in METRIC_WORD.finditer(text):
        word, after = m.group(), text[m.end():m.end() + 1]
        if word in PACKAGES or word.endswith(("_", ":")) or after == "*":
            continue
        found.add(word)
    return found


def test_the_contract_holds_exactly_the_pinned_names() -> None:
    assert contract_names() == PINNED
    assert names.VLLM_HISTOGRAMS <= PINNED


def test_every_exported_metric_is_in_the_contract() -> None:
    ours = {v for v in contract_names() if not v.startswith("vllm:")}
    assert set(exported()) == ours
    for name, kind in exported().items():
        assert name.endswith("_total") == (kind == "counter"), (name, kind)


def test_the_gateway_registry_is_per_app() -> None:
    a, b = (Gateway(StaticSource(RouteTable.from_mapping({}))) for _ in range(2))
    a.requests.labels("m", "/v1/completions", "200").inc()
    assert a.registry is not b.registry
    assert b.registry.get_sample_value(names.GATEWAY_REQUESTS, {
        "model": "m", "path": "/v1/completions", "code": "200"}) is None


def _dashboard_queries() -> list[str]:
    dash = json.loads((CHART / "dashboards" / "specserve.json").read_text())
    queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        queries.append(query["query"] if isinstance(query, dict) else "")
        queries.append(var.get("definition", ""))
    return queries


def test_the_dashboard_reads_only_exported_series() -> None:
    used = set().union(*(chart_words(q) for q in _dashboard_queries()))
    assert used, "no metric found in the dashboard: is the parser broken?"
    assert used <= known_series(), sorted(used - known_series())


@pytest.mark.parametrize("path", sorted(
    str(p.relative_to(CHART)) for p in CHART.rglob("*")
    if p.is_file() and p.suffix in (".yaml", ".tpl", ".json", ".txt")))
def test_chart_files_name_only_known_metrics(path: str) -> None:
    known = known_series() | set(exported()) | contract_names()
    used = chart_words((CHART / path).read_text())
    assert used <= known, sorted(used - known)

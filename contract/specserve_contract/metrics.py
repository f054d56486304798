"""Prometheus metric names: what the exporters, the operator's PromQL and the dashboard agree on.

Each constant is the name PromQL uses: a counter's ends in `_total`, a histogram's is the family
name (its series add `_bucket`, `_sum`, `_count`), a gauge's is the series name. prometheus_client
takes a counter's name with or without `_total` and exposes `<name>_total` either way, so the
exporters pass these constants as they are.

Dashboards (charts/specserve/dashboards/specserve.json), the operator's SLO loop and users'
alerting rules read these names: renaming one is a breaking change. tests/test_metric_names.py
fails when the chart names a metric that is neither defined here nor exported.

    exported by                          port, path                    names
    engine (vllm/exported_metrics.py)    control port, /metrics        specserve_*
    gateway (app, holding, resume)       gateway port, /metrics        specserve_gateway_*
    operator (metrics.py)                SPECSERVE_METRICS_PORT        specserve_operator_*
    vLLM itself                          serving port, /metrics        vllm:* (read, not ours)
"""

from __future__ import annotations

# --------------------------------------------------------------------- engine (control port)

SPECULATIVE_K = "specserve_speculative_k"  # histogram: K chosen per step
SPECULATIVE_K_LAST = "specserve_speculative_k_last"  # gauge: K of the latest step
REQUEST_K = "specserve_request_k"  # histogram: draft tokens a request verifies
BATCH_SIZE = "specserve_batch_size"  # gauge
POLICY_VERSION = "specserve_policy_version"  # gauge
POLICY_MODE = "specserve_policy_mode_info"  # gauge{mode}: 1 for the mode in force
STEP_TIME_PREDICTED = "specserve_step_time_predicted_seconds"  # histogram
STEP_TIME_OBSERVED = "specserve_step_time_observed_seconds"  # histogram
REQUEST_TPOT_PREDICTED = "specserve_request_tpot_predicted_seconds"  # histogram
ACCEPTED_TOKENS_PREDICTED = "specserve_accepted_tokens_predicted_total"  # counter
ACCEPTED_TOKENS_OBSERVED = "specserve_accepted_tokens_observed_total"  # counter
DRAFT_TOKENS_VERIFIED = "specserve_draft_tokens_verified_total"  # counter
DRAFT_TOKENS_TRIMMED = "specserve_draft_tokens_trimmed_total"  # counter
GOODPUT_ESTIMATE = "specserve_goodput_estimate_tokens_per_second"  # gauge
STEPS = "specserve_steps_total"  # counter
STEPS_BY_BATCH = "specserve_steps_by_batch_total"  # counter{batch,k}
STEPS_SPECULATION_OFF = "specserve_steps_speculation_off_total"  # counter
STEPS_WITH_PREFILL = "specserve_steps_with_prefill_total"  # counter{k}: steps carrying prefill
DRAFTS_STOPPED_EARLY = "specserve_drafts_stopped_early"  # gauge
MODEL_REFITS = "specserve_model_refits_total"  # counter

# ------------------------------------------------------------------------------------ gateway

GATEWAY_REQUESTS = "specserve_gateway_requests_total"  # counter{model,path,code}
GATEWAY_OUTSTANDING = "specserve_gateway_outstanding_requests"  # gauge{backend}
GATEWAY_RESUMES = "specserve_gateway_resumes_total"  # counter{model,path}
GATEWAY_RESUME_FAILURES = "specserve_gateway_resume_failures_total"  # counter{model,path,reason}
GATEWAY_RESUME_SECONDS = "specserve_gateway_resume_seconds"  # histogram{model}
GATEWAY_HELD = "specserve_gateway_held_requests"  # gauge{model}
GATEWAY_HOLDS = "specserve_gateway_holds_total"  # counter{model,outcome}
GATEWAY_ROUTE_CONFLICTS = "specserve_gateway_route_conflicts"  # gauge{model,namespace}

# ----------------------------------------------------------------------------------- operator

OPERATOR_RECONCILES = "specserve_operator_reconciles_total"  # counter{result}
OPERATOR_SLO_LOOP_SECONDS = "specserve_operator_slo_loop_seconds"  # histogram
OPERATOR_SLO_LOOP_FAILURES = "specserve_operator_slo_loop_failures_total"  # counter
OPERATOR_POLICY_PUSHES = "specserve_operator_policy_pushes_total"  # counter{result}
OPERATOR_API_CALLS = "specserve_operator_api_calls_total"  # counter{verb,resource,code}
OPERATOR_DESIRED_REPLICAS = "specserve_operator_desired_replicas"  # gauge{namespace,name}
OPERATOR_SLO_NO_DATA = "specserve_operator_slo_no_data"  # gauge{namespace,name,reason}
OPERATOR_SLO_NO_DATA_PASSES = "specserve_operator_slo_no_data_passes_total"  # counter{reason}

# ------------------------------------------------------------------------------ vLLM (0.32)
# vLLM's own metrics on the serving port that SpecServe reads (the operator's PromQL, the
# dashboard, the benchmarks). Not ours to rename: they are listed so that every reader spells
# them the same way (docs/vllm-seams.md, section 8: where vLLM defines them).

VLLM_TTFT = "vllm:time_to_first_token_seconds"  # histogram
VLLM_TPOT = "vllm:request_time_per_output_token_seconds"  # histogram
VLLM_E2E_LATENCY = "vllm:e2e_request_latency_seconds"  # histogram: its _count, finished requests
VLLM_REQUEST_GENERATION_TOKENS = "vllm:request_generation_tokens"  # histogram
VLLM_REQUEST_PROMPT_TOKENS = "vllm:request_prompt_tokens"  # histogram
VLLM_RUNNING = "vllm:num_requests_running"  # gauge
VLLM_WAITING = "vllm:num_requests_waiting"  # gauge
VLLM_GENERATION_TOKENS = "vllm:generation_tokens_total"  # counter
VLLM_SPEC_DRAFTS = "vllm:spec_decode_num_drafts_total"  # counter
VLLM_SPEC_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"  # counter
VLLM_SPEC_ACCEPTED_TOKENS = "vllm:spec_decode_num_accepted_tokens_total"  # counter

# The vLLM names above that are histograms (their series: `_bucket`, `_sum`, `_count`).
VLLM_HISTOGRAMS = frozenset({VLLM_TTFT, VLLM_TPOT, VLLM_E2E_LATENCY,
                             VLLM_REQUEST_GENERATION_TOKENS, VLLM_REQUEST_PROMPT_TOKENS})

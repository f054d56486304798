"""The seam SpecServe steers K through is the one the installed vLLM has (no engine started)."""

from __future__ import annotations

import pytest
import vllm
from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

from specserve_engine.serving import speculative_config
from specserve_engine.vllm.scheduler import UnsupportedVllm, check_dynamic_sd_lookup


def test_the_lookup_vllm_builds_from_our_speculative_config_passes_the_guard() -> None:
    table = speculative_config("draft", 4, ((1, 1024, 4),))["num_speculative_tokens_per_batch_size"]
    lookup = build_dynamic_sd_schedule_lookup(table, vllm_max_batch_size=256,
                                              vllm_num_speculative_tokens=4)
    check_dynamic_sd_lookup(lookup, vllm.__version__)
    assert lookup[1] == lookup[256] == 4


@pytest.mark.parametrize("other", [None, {1: 3}, [1.5, 2.0]])
def test_another_shape_refuses_to_start_with_a_clear_message(other: object) -> None:
    with pytest.raises(UnsupportedVllm, match=r"vLLM 9\.9\.9 has .*--no-specserve"):
        check_dynamic_sd_lookup(other, "9.9.9")

"""The catch-up's bookkeeping and chunking (pure; no engine)."""

from __future__ import annotations

import pytest

from specserve_engine.vllm.draft_catchup import (
    DraftKvLag,
    Piece,
    catchup_chunks,
    first_stale_position,
    lagging_blocks,
)


def test_a_request_drafted_every_step_never_lags() -> None:
    lag = DraftKvLag()
    lag.start("a", 0)
    # Step 1: prompt [0, 10) drafted; step 2 verifies 3 drafts, 1 rejected: query [10, 14).
    assert lag.behind(["a"], [0]) == []
    lag.drafted(["a"], [10])
    assert lag.behind(["a"], [10]) == []
    lag.drafted(["a"], [14 - 1])
    assert lag.behind(["a"], [13]) == []


def test_skipped_steps_leave_the_gap_from_the_last_drafted_position() -> None:
    lag = DraftKvLag()
    lag.start("a", 0)
    lag.start("b", 32)  # a prefix-cache hit of 32 tokens
    lag.drafted(["a"], [10])
    # Steps at K=0: nothing drafted, the target moved on to 13 (a) and 35 (b).
    assert lag.behind(["a", "b"], [13, 35]) == [(0, 10, 13), (1, 32, 35)]


def test_finished_preempted_and_unknown_requests() -> None:
    lag = DraftKvLag()
    lag.start("a", 0)
    lag.drafted(["a"], [50])
    lag.forget(["a"])
    assert lag.behind(["a"], [7]) == []  # never seen again: counted as current
    lag.start("a", 0)  # preempted and resumed: recomputed from scratch
    assert lag.behind(["a"], [7]) == [(0, 0, 7)]


def _covered(chunks: list[list[Piece]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for chunk in chunks:
        for p in chunk:
            out.setdefault(p.row, []).extend(range(p.begin, p.end))
    return out


@pytest.mark.parametrize("budget", [2, 3, 5, 8, 64])
def test_chunks_cover_every_missing_position_once_within_the_budget(budget: int) -> None:
    lagging = [(0, 3, 10), (2, 0, 1), (5, 40, 57)]
    chunks = catchup_chunks(lagging, budget)
    for chunk in chunks:
        # Each piece's tokens plus the one token vLLM's first pass appends to it.
        assert sum(p.end - p.begin + 1 for p in chunk) <= budget
        assert all(p.end > p.begin for p in chunk)
    assert _covered(chunks) == {0: list(range(3, 10)), 2: [0], 5: list(range(40, 57))}


def test_one_call_when_it_fits() -> None:
    assert catchup_chunks([(0, 3, 10), (1, 5, 6)], 64) == [[Piece(0, 3, 10), Piece(1, 5, 6)]]


def test_the_blocks_a_lagging_request_leaves_unwritten_by_the_draft() -> None:
    blocks = [7, 3, 9, 4]
    assert lagging_blocks(blocks, 20, 20, 16) == []
    assert lagging_blocks(blocks, 20, 40, 16) == [3, 9]  # positions 20..39: blocks 1 and 2
    assert lagging_blocks(blocks, 0, 16, 16) == [7]


def test_a_prefix_hit_is_current_up_to_its_first_stale_block() -> None:
    stale = {9}.__contains__
    assert first_stale_position([7, 3, 9, 4], stale, 16, 48) == 32
    assert first_stale_position([7, 3, 9, 4], stale, 16, 32) == 32  # block 9 not hit
    assert first_stale_position([9], stale, 16, 16) == 0

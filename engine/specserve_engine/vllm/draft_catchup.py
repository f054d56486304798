"""Worker side: a K=0 step runs no draft forward; the draft's KV cache catches up on resume.

vLLM 0.32's ``SpecDecodeBaseProposer.propose`` runs its first draft forward even when the step's
K is 0, only to keep the draft's KV cache in step with the target (upstream vLLM issue #49548).
``DraftCatchup`` wraps ``propose`` on the drafter *instance*:

- **K = 0:** return the empty ``[batch, 0]`` result vLLM returns, without any forward.
- **Bookkeeping:** ``DraftKvLag`` keeps, per request, the position up to which the draft's KV
  is current. After a draft pass over a request's query (positions ``[start, seq_len)``, the
  last ``rejected`` of them rejected drafts) it is ``seq_len - rejected``: exactly where the
  target's next query starts. A new or resumed (preempted) request starts at the tokens the
  scheduler reports as already computed (its prefix-cache hit), as vLLM itself assumes, unless
  one of those cached blocks was filled by the target while the draft was skipped: then it
  starts at that block (``StaleBlocks``; the blocks of requests that finished lagging, and those
  still lagging in running requests).
- **Resume (K > 0 after skipped steps):** the draft must also run over each lagging request's
  missing positions ``[synced, start)``. The draft-model path takes no target hidden states,
  so their token ids (in ``input_batch.token_ids_cpu``) and the shared block table are all it
  needs. When they fit the drafter's buffers they go in front of the row's query in the step's
  own first pass (``_extend_queries``: token ids, positions, query bounds; vLLM's first pass
  then derives the slot mapping and the extra slot as usual), so resuming costs no extra
  forward. Otherwise K=0 calls of the original ``propose`` over sub-batches of the lagging rows
  run first (``_catch_up``: each is vLLM's own first pass; its "next token" is the token at
  ``start``, whose slot the real pass rewrites).

Only the draft model is affected: the target's KV, the verified tokens and so the output are
exactly as without the skip. See docs/vllm-seams.md ("K = 0 without a draft forward").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Per-row metadata of the step's CommonAttentionMetadata that a sub-batch must not inherit (the
# CPU attention builder reads none of them; other builders would read wrong rows).
_PER_ROW_FIELDS = ("logits_indices_padded", "num_logits_indices", "max_logits_per_req",
                   "encoder_seq_lens", "encoder_seq_lens_cpu", "dcp_local_seq_lens",
                   "dcp_local_seq_lens_cpu_upper_bound", "positions", "is_prefilling",
                   "req_idx", "mm_req_doc_ranges", "rswa_prefix_lens",
                   "replayssm_decode_base_cpu", "_num_computed_tokens_cache",
                   "_token_to_req_indices_cache")


# ... and those that follow the tokens, whose count changes when queries are extended.
_PER_TOKEN_FIELDS = ("logits_indices_padded", "num_logits_indices", "max_logits_per_req",
                     "positions", "_num_computed_tokens_cache", "_token_to_req_indices_cache")


class DraftKvLag:
    """Per request: the number of leading positions whose draft KV is current."""

    def __init__(self) -> None:
        self.synced: dict[str, int] = {}

    def start(self, req_id: str, computed: int) -> None:
        """A new or resumed request: its first ``computed`` tokens came from the prefix cache."""
        self.synced[req_id] = computed

    def forget(self, req_ids: Iterable[str]) -> None:
        for rid in req_ids:
            self.synced.pop(rid, None)

    def behind(self, req_ids: Sequence[str], starts: Sequence[int]) -> list[tuple[int, int, int]]:
        """``(row, synced, start)`` for each row whose draft KV stops before its query start.
        A request never seen (should not happen) counts as current."""
        synced = self.synced
        lagging = []
        for row, (rid, start) in enumerate(zip(req_ids, starts, strict=True)):
            have = synced.get(rid, start)
            if have < start:
                lagging.append((row, have, start))
        return lagging

    def drafted(self, req_ids: Sequence[str], ends: Sequence[int]) -> None:
        for rid, end in zip(req_ids, ends, strict=True):
            self.synced[rid] = end


def lagging_blocks(blocks: Sequence[int], synced: int, computed: int, block_size: int
                   ) -> list[int]:
    """The blocks holding positions ``[synced, computed)``: filled by the target, not the draft."""
    if synced >= computed:
        return []
    return list(blocks[synced // block_size: -(-computed // block_size)])


def first_stale_position(cached_blocks: Sequence[int], is_stale: Callable[[int], bool],
                         block_size: int, computed: int) -> int:
    """Where a prefix-cache hit of ``computed`` tokens stops being current for the draft."""
    for i, block in enumerate(cached_blocks[: computed // block_size]):
        if is_stale(block):
            return i * block_size
    return computed


@dataclass(frozen=True)
class Piece:
    """Draft positions ``[begin, end)`` of batch row ``row``; the token at ``end`` is appended."""

    row: int
    begin: int
    end: int


def catchup_chunks(lagging: Sequence[tuple[int, int, int]], max_tokens: int
                   ) -> list[list[Piece]]:
    """Split the missing spans into calls of at most ``max_tokens`` draft tokens each, counting
    the one token vLLM's first pass appends per row; a long span continues in the next call."""
    assert max_tokens >= 2
    chunks: list[list[Piece]] = []
    chunk: list[Piece] = []
    room = max_tokens
    for row, begin, end in lagging:
        while begin < end:
            if room < 2:
                chunks.append(chunk)
                chunk, room = [], max_tokens
            take = min(end - begin, room - 1)
            chunk.append(Piece(row, begin, begin + take))
            room -= take + 1
            begin += take
    if chunk:
        chunks.append(chunk)
    return chunks


def supports_catchup(drafter: Any, runner: Any) -> bool:
    """The draft-model path of the V1 runner: a first pass that needs only token ids."""
    return (getattr(drafter, "method", None) == "draft_model"
            and getattr(drafter, "needs_extra_input_slots", False)
            and not getattr(drafter, "pass_hidden_states_to_model", True)
            and not getattr(drafter, "parallel_drafting", True)
            and not getattr(drafter, "uses_mrope", True)
            and not getattr(drafter, "supports_mm_inputs", True)
            and hasattr(getattr(runner, "input_batch", None), "token_ids_cpu"))


class DraftCatchup:
    """Wraps ``drafter.propose``: no forward at K=0, a catch-up pass at the next K > 0."""

    def __init__(self, drafter: Any, runner: Any) -> None:
        self.drafter = drafter
        self.runner = runner
        self.lag = DraftKvLag()
        self.skip_when_off = True  # False: vLLM's behaviour (the first pass runs at K=0)
        self.catch_up = True  # False only to measure what the catch-up is worth (tests)
        self.skipped_last = False  # the last propose() was a K=0 step without a forward
        self.skipped_steps = 0
        self.catchup_tokens = 0  # draft positions recomputed on resume steps, in total
        self.last_catchup_tokens = 0  # ... on this step
        self.catchup_calls = 0  # separate K=0 catch-up passes (when not folded into the step's)
        self.extended_steps = 0  # steps whose first pass took the catch-up in
        # Blocks the target filled while the draft was skipped, of requests that are gone: a
        # prefix-cache hit on one of them must not count as current for the draft.
        self.stale_blocks: set[int] = set()
        self._original: Callable[..., torch.Tensor] = drafter.propose
        drafter.propose = self._propose

    # -- the scheduler's news, once per step (worker.execute_model, before the runner's) --

    def _blocks(self, block_ids: tuple[list[int], ...]) -> list[int]:
        return block_ids[max(self.drafter.kv_cache_gid, 0)]

    def _lagging_blocks(self, rid: str) -> list[int]:
        state = self.runner.requests.get(rid)
        synced = self.lag.synced.get(rid)
        if state is None or synced is None:
            return []
        # All its tokens but the last sampled one are computed (or scheduled) by the target.
        return lagging_blocks(self._blocks(state.block_ids), synced, state.num_tokens - 1,
                              self.drafter.block_size)

    def _is_stale(self) -> Callable[[int], bool]:
        pending = set(self.stale_blocks)
        for rid in self.lag.synced:
            pending.update(self._lagging_blocks(rid))
        return pending.__contains__

    def _start(self, rid: str, computed: int, block_ids: tuple[list[int], ...] | None,
               is_stale: Callable[[int], bool] | None) -> Callable[[int], bool] | None:
        if computed and block_ids is not None:
            is_stale = is_stale or self._is_stale()
            computed = first_stale_position(self._blocks(block_ids), is_stale,
                                            self.drafter.block_size, computed)
        self.lag.start(rid, computed)
        return is_stale

    def note_step(self, scheduler_output: Any) -> None:
        self.skipped_last = False
        self.last_catchup_tokens = 0
        lag = self.lag
        gone = set(scheduler_output.finished_req_ids)
        gone.update(getattr(scheduler_output, "preempted_req_ids", None) or ())
        for rid in gone:
            self.stale_blocks.update(self._lagging_blocks(rid))
        lag.forget(gone)
        is_stale = None  # built once per step, only when a prefix-cache hit needs it
        for new in scheduler_output.scheduled_new_reqs:
            is_stale = self._start(new.req_id, new.num_computed_tokens, new.block_ids, is_stale)
        cached = scheduler_output.scheduled_cached_reqs
        resumed = cached.resumed_req_ids
        if resumed:
            for rid, computed, blocks in zip(cached.req_ids, cached.num_computed_tokens,
                                             cached.new_block_ids, strict=True):
                if rid in resumed:
                    is_stale = self._start(rid, computed, blocks, is_stale)

    # -- propose --

    def _propose(self, num_speculative_tokens: int, **kw: Any) -> torch.Tensor:
        cad = kw["common_attn_metadata"]
        if num_speculative_tokens == 0 and self.skip_when_off:
            self.skipped_last = True
            self.skipped_steps += 1
            return torch.empty(cad.batch_size(), 0, device=kw["next_token_ids"].device,
                               dtype=torch.int64)
        self.skipped_last = False
        req_ids = self.runner.input_batch.req_ids[: cad.batch_size()]
        seq_lens = cad.seq_lens.cpu().tolist()
        query_lens = torch.diff(cad.query_start_loc_cpu[: cad.batch_size() + 1]).tolist()
        if self.catch_up:
            starts = [s - q for s, q in zip(seq_lens, query_lens, strict=True)]
            lagging = self.lag.behind(req_ids, starts)
            if lagging:
                missing = sum(s - a for _, a, s in lagging)
                fits = (kw["target_token_ids"].shape[0] + missing + len(req_ids)
                        <= self.drafter.max_num_tokens)
                if fits:  # into this step's first pass: no extra forward
                    kw = self._extend_queries(lagging, kw)
                    self.extended_steps += 1
                    self.catchup_tokens += missing
                    self.last_catchup_tokens += missing
                else:  # separate K=0 passes first, split to fit the drafter's buffers
                    self._catch_up(lagging, kw)
        rejected = kw.get("num_rejected_tokens_gpu")
        ends = seq_lens if rejected is None else [
            s - r for s, r in zip(seq_lens, rejected.cpu().tolist(), strict=True)]
        try:
            return self._original(num_speculative_tokens=num_speculative_tokens, **kw)
        finally:
            # The first pass has written the query's KV even when drafting stops early.
            self.lag.drafted(req_ids, ends)
            if self.stale_blocks:
                self._refresh(req_ids, ends)

    def _refresh(self, req_ids: Sequence[str], ends: Sequence[int]) -> None:
        """Blocks a request's draft KV now covers are current again (for whoever owns them)."""
        size = self.drafter.block_size
        for rid, end in zip(req_ids, ends, strict=True):
            state = self.runner.requests.get(rid)
            if state is not None:
                self.stale_blocks.difference_update(self._blocks(state.block_ids)[: end // size])

    def _extend_queries(self, lagging: list[tuple[int, int, int]], kw: dict[str, Any]
                        ) -> dict[str, Any]:
        """This step's first-pass inputs with each lagging row's query started at its synced
        position: the missing tokens go in front of the row's own (the rejected drafts, which
        vLLM masks, stay at the end), positions and query bounds follow; the slot mapping is
        recomputed from positions by the first pass itself."""
        cad = kw["common_attn_metadata"]
        ids, pos = kw["target_token_ids"], kw["target_positions"]
        device = ids.device
        tokens = self.runner.input_batch.token_ids_cpu
        batch = cad.batch_size()
        qsl = cad.query_start_loc_cpu[: batch + 1].clone()
        shift = torch.zeros(batch + 1, dtype=qsl.dtype)
        id_parts, pos_parts, prev = [], [], 0
        for row, begin, start in lagging:
            cut = int(qsl[row])
            id_parts += [ids[prev:cut], torch.from_numpy(
                tokens[row, begin:start].astype(np.int32)).to(device=device, dtype=ids.dtype)]
            pos_parts += [pos[prev:cut],
                          torch.arange(begin, start, device=device, dtype=pos.dtype)]
            shift[row + 1:] += start - begin
            prev = cut
        id_parts.append(ids[prev:])
        pos_parts.append(pos[prev:])
        new_ids, new_pos = torch.cat(id_parts), torch.cat(pos_parts)
        qsl += shift
        sub = cad.replace(
            query_start_loc=qsl.to(device), query_start_loc_cpu=qsl,
            num_actual_tokens=cad.num_actual_tokens + int(shift[-1]),
            max_query_len=int(torch.diff(qsl).max()),
            slot_mapping=cad.slot_mapping[:0].new_zeros(new_ids.shape[0]),
            **{f: None for f in _PER_TOKEN_FIELDS if hasattr(cad, f)})
        return {**kw, "target_token_ids": new_ids, "target_positions": new_pos,
                "common_attn_metadata": sub}

    def _catch_up(self, lagging: list[tuple[int, int, int]], kw: dict[str, Any]) -> None:
        drafter = self.drafter
        cad = kw["common_attn_metadata"]
        tokens = self.runner.input_batch.token_ids_cpu
        device = kw["next_token_ids"].device
        for chunk in catchup_chunks(lagging, drafter.max_num_tokens):
            rows = [p.row for p in chunk]
            lens = np.array([p.end - p.begin for p in chunk], dtype=np.int32)
            ids = np.concatenate([tokens[p.row, p.begin:p.end] for p in chunk])
            positions = np.concatenate([np.arange(p.begin, p.end) for p in chunk])
            next_ids = np.array([tokens[p.row, p.end] for p in chunk])
            seq = torch.tensor([p.end for p in chunk], dtype=cad.seq_lens.dtype)
            qsl_cpu = torch.zeros(len(chunk) + 1, dtype=torch.int32)
            qsl_cpu[1:] = torch.from_numpy(np.cumsum(lens, dtype=np.int32))
            n = int(lens.sum())
            sub = cad.replace(
                query_start_loc=qsl_cpu.to(device), query_start_loc_cpu=qsl_cpu,
                seq_lens=seq.to(device), seq_lens_cpu_upper_bound=seq,
                num_reqs=len(chunk), num_actual_tokens=n, max_query_len=int(lens.max()),
                max_seq_len=int(seq.max()),
                block_table_tensor=cad.block_table_tensor[torch.tensor(rows, device=device)],
                slot_mapping=cad.slot_mapping[:0].new_zeros(n),  # recomputed by the first pass
                **{f: None for f in _PER_ROW_FIELDS if hasattr(cad, f)})
            hidden = kw["target_hidden_states"]
            self._original(
                num_speculative_tokens=0,
                target_token_ids=torch.from_numpy(ids.astype(np.int32)).to(device),
                target_positions=torch.from_numpy(positions.astype(np.int64)).to(device),
                target_hidden_states=hidden[:1].expand(n, -1),  # unused by the draft model
                next_token_ids=torch.from_numpy(next_ids.astype(np.int32)).to(device),
                token_indices_to_sample=None, common_attn_metadata=sub,
                sampling_metadata=kw["sampling_metadata"], mm_embed_inputs=None,
                num_rejected_tokens_gpu=None, slot_mappings=None)
            self.catchup_tokens += n
            self.last_catchup_tokens += n
            self.catchup_calls += 1

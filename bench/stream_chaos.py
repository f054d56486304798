"""Streams through the gateway while an engine dies: how many complete, equal to an unbroken run,
and what the resume costs the client.

    python bench/stream_chaos.py                    # 40 streams, one every 0.25 s, kill at 4 s

Starts two engines on the tiny target (float32, eager: the continuation's prefill then picks
the greedy tokens the dead engine's decode steps would have) and the gateway in this process.
Runs the streams once unbroken (the reference), then again with the engine serving the most
streams killed (SIGKILL, its whole process group) `--kill-at` seconds in. Prints completed
streams, streams equal to the reference, resumes counted by the gateway, and, for each stream
that was on the killed engine, the longest gap between two of its chunks after the kill against
its median gap: the latency a resume adds as the client sees it (p50 / max).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import openai
import uvicorn

from specserve_contract.metrics import GATEWAY_RESUMES
from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess, free_port
from specserve_gateway.app import create_app
from specserve_gateway.routing import RouteTable
from specserve_gateway.sources import StaticSource


@dataclass
class Stream:
    text: str = ""
    usage: tuple[int, int] | None = None
    error: str | None = None
    chunk_times: list[float] = field(default_factory=list)


def run_stream(gateway: str, prompt: str, tokens: int) -> Stream:
    out = Stream()
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0,
                           timeout=300)
    try:
        for event in client.completions.create(
                model="tiny", prompt=prompt, max_tokens=tokens, temperature=0.0, stream=True,
                stream_options={"include_usage": True}):
            if event.choices:
                out.text += event.choices[0].text
                out.chunk_times.append(time.monotonic())
            if event.usage is not None:
                out.usage = (event.usage.prompt_tokens, event.usage.completion_tokens)
    except openai.APIError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def run_all(gateway: str, prompts: list[str], tokens: int, every_s: float) -> list[Stream]:
    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = []
        for prompt in prompts:
            futures.append(pool.submit(run_stream, gateway, prompt, tokens))
            time.sleep(every_s)
        return [f.result() for f in futures]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--streams", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--every", type=float, default=0.25, help="seconds between stream starts")
    ap.add_argument("--kill-at", type=float, default=4.0, help="seconds after the first start")
    args = ap.parse_args()

    models = tiny.build()
    prompts = tiny.heldout_prompts(models, args.streams, seed=11)
    engines = [ServerProcess(["--model", str(models.target), "--draft", "none",
                              "--served-model-name", "tiny", "--dtype", "float32",
                              "--", "--enforce-eager"], name=f"chaos-{i}") for i in range(2)]
    for e in engines:
        e.start()
    for e in engines:
        e.wait_ready()
    port = free_port()
    table = RouteTable.from_mapping({"tiny": [e.url for e in engines]})
    server = uvicorn.Server(uvicorn.Config(create_app(StaticSource(table)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    gateway = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{gateway}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        print("unbroken run ...", file=sys.stderr, flush=True)
        reference = run_all(gateway, prompts, args.tokens, args.every)
        killed: dict[str, float] = {}

        def kill_later() -> None:
            time.sleep(args.kill_at)
            load = httpx.get(f"{gateway}/gateway/routes").json()["backends"]
            victim = max(engines, key=lambda e: load[e.url]["outstanding"])
            assert victim.proc is not None
            os.killpg(victim.proc.pid, signal.SIGKILL)
            killed["at"] = time.monotonic()
            killed["in_flight"] = load[victim.url]["outstanding"]

        print("run with a kill ...", file=sys.stderr, flush=True)
        threading.Thread(target=kill_later, daemon=True).start()
        broken = run_all(gateway, prompts, args.tokens, args.every)
        metrics = httpx.get(f"{gateway}/metrics").text
    finally:
        server.should_exit = True
        for e in engines:
            e.stop()

    completed = sum(b.error is None for b in broken)
    equal = sum(b.error is None and b.text == r.text and b.usage == r.usage
                for b, r in zip(broken, reference, strict=True))
    resumes = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith(f"{GATEWAY_RESUMES}{{"))
    added = []
    for b in broken:
        gaps = [t1 - t0 for t0, t1 in zip(b.chunk_times, b.chunk_times[1:], strict=False)]
        across = [t1 - t0 for t0, t1 in zip(b.chunk_times, b.chunk_times[1:], strict=False)
                  if t0 <= killed["at"] < t1]
        if across and len(gaps) > 2 and max(across) > 3 * statistics.median(gaps):
            added.append(max(across) - statistics.median(gaps))  # a stream the kill broke
    print(f"\n{args.streams} streams of {args.tokens} tokens, one every {args.every} s; "
          f"engine with {killed['in_flight']:.0f} streams in flight killed at {args.kill_at} s")
    print(f"completed {completed}/{args.streams}; equal to the unbroken run {equal}/"
          f"{args.streams}; resumes {resumes:.0f}")
    if added:
        added.sort()
        print(f"added latency at the break (client side, {len(added)} streams): p50 "
              f"{1e3 * statistics.median(added):.0f} ms, max {1e3 * added[-1]:.0f} ms")
    return 0 if completed == equal == args.streams else 1


if __name__ == "__main__":
    sys.exit(main())

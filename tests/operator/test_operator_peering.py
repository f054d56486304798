"""Two operator replicas (two `kopf run` processes) against the emulator: the older one acts,
the younger waits; when the leader dies without a word, the other takes over after the peering
lifetime and acts.

kopf's peering object (a namespaced KopfPeering here: the operators watch one namespace) is
served by the emulator as the chart's CRD would serve it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from specserve_contract import ENV_PEERING, ENV_PEERING_LIFETIME_S
from tests.kits.operator_kit import DEPLOYMENTS, NS, create, eventually, live, ssd

PEERING = "specserve-operator"
PEERINGS = "kopf.dev/v1/kopfpeerings"
LIFETIME_S = 6
SPEC: dict[str, Any] = {"model": {"target": "org/target-1b", "draft": "org/draft-100m"}}


@contextmanager
def operator_process(cluster: Any, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "SPECSERVE_TEST_API_URL": str(cluster.url).rstrip("/"),
           ENV_PEERING: PEERING, ENV_PEERING_LIFETIME_S: str(LIFETIME_S),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--verbose", "-n", NS,
             "-m", "tests.kits.operator_process", "-m", "specserve_operator.handlers"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def serve_peering(cluster: Any) -> None:
    """The chart's KopfPeering CRD (namespaced, kopf.dev/v1) and its peering object."""
    info = cluster.resources[PEERINGS]
    info.kind = "KopfPeering"
    info.singular = "kopfpeering"
    info.namespaced = True
    info.verbs = {"list", "watch", "get", "create", "patch", "update", "delete"}
    r = await cluster.post(f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings", json={
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
        "metadata": {"name": PEERING, "namespace": NS}})
    assert r.status < 300, await r.text()


def peers(cluster: Any) -> dict[str, Any]:
    return live(cluster, PEERINGS, PEERING).get("status") or {}


def text(log: Path) -> str:
    return log.read_text(errors="replace")


def both(*logs: Path) -> str:
    """The logs without the timers' routine lines."""
    def story(log: Path) -> str:
        lines = [x for x in text(log).splitlines() if "Timer '" not in x]
        return "\n".join(lines[-40:])
    return "\n".join(f"---- {log.name}\n{story(log)}" for log in logs)


async def test_the_oldest_replica_acts_and_the_other_takes_over_when_it_dies(
    cluster: Any, tmp_path: Path,
) -> None:
    await serve_peering(cluster)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with operator_process(cluster, first_log) as first:
        await eventually(lambda: len(peers(cluster)) == 1, 60,
                         explain=lambda: both(first_log, second_log))
        with operator_process(cluster, second_log) as second:
            await eventually(lambda: len(peers(cluster)) == 2, 60,
                             explain=lambda: both(first_log, second_log))
            # kopf starts each replica paused until it has read the peering; the younger one
            # stays so (it logs its resume, and nothing else, when it gets to act).
            priorities = sorted(p["priority"] for p in peers(cluster).values())
            assert priorities[0] < priorities[1]
            await create(cluster, ssd("one", SPEC))
            await eventually(lambda: live(cluster, DEPLOYMENTS, "one"), 30,
                             explain=lambda: both(first_log, second_log))
            await asyncio.sleep(2)  # the follower stays paused: it never handled "one"
            assert "[ns1/one]" in text(first_log) and "[ns1/one]" not in text(second_log)
            assert "Resuming operations" not in text(second_log)

            first.send_signal(signal.SIGKILL)  # dies without removing its peering record
            first.wait(10)
            await eventually(lambda: "Resuming operations" in text(second_log),
                             LIFETIME_S + 30, explain=lambda: both(first_log, second_log))
            await create(cluster, ssd("two", SPEC))
            await eventually(lambda: live(cluster, DEPLOYMENTS, "two"), 30,
                             explain=lambda: both(first_log, second_log))
            assert "[ns1/two]" in text(second_log)
            assert second.poll() is None


pytestmark = pytest.mark.asyncio

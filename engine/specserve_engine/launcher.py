"""Run `specserve serve` as a child process and wait until it answers (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerFailed(RuntimeError):
    pass


class ServerProcess:
    """`specserve serve <args>` on 127.0.0.1:<port>, logging to a file; a context manager.

    ``start()`` returns at once; ``wait_ready()`` blocks until ``GET /health`` answers 200, so
    several engines can start side by side and be waited on afterwards.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        name: str = "engine",
        program: Sequence[str] = (sys.executable, "-m", "specserve_engine.cli"),
    ) -> None:
        self.port = port or free_port()
        self.program = list(program)  # what runs `specserve` (an installed script, say)
        self.args = list(args)
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
        self.name = name
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=f"specserve-{name}-",
                                                          suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        cmd = [*self.program, "serve",
               "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        log = open(self.log_path, "wb")  # noqa: SIM115 (the child keeps writing to it)
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = 900.0) -> ServerProcess:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(
                    f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerFailed(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The server spawns an engine-core and a worker process: signal the whole group.
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> ServerProcess:
        return self.start().wait_ready()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

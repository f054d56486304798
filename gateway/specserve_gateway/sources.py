"""Where route tables come from: a `RouteSource` hands the proxy the current `RouteTable`.

- `StaticSource`: a fixed table (from `--backend MODEL=URL` flags);
- `FileSource`: a YAML/JSON routes file, re-read when it changes (e.g. a mounted ConfigMap);
- `CombinedSource`: several sources merged;
- `specserve_gateway.kube_routes.KubeSource`: SpecServeDeployments and their ready pods, watched.

The proxy calls `table()` on every request, so a source only swaps in a new table object; it
then calls the listeners given to `subscribe` (the gateway wakes the requests it holds for a
model without ready backends, `holding.py`).
`ready()` says whether the table is the source's first real one yet (the gateway's readiness):
a gateway that routed before its first route list would answer 404 for every model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import yaml

from specserve_gateway.routing import RouteError, RouteTable, table_from_document

log = logging.getLogger("specserve_gateway")


class RouteSource(Protocol):
    def table(self) -> RouteTable: ...

    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Notifying(Protocol):
    """A route source that calls its listeners after it swapped in a new table."""

    def subscribe(self, listener: Callable[[], None]) -> None: ...


class Listeners:
    """Who to call after a source swapped in a new table (`subscribe`)."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def notify(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not stop the source's updates
                log.exception("route-change listener failed")


class StaticSource(Listeners):
    def __init__(self, table: RouteTable) -> None:
        super().__init__()
        self._table = table

    def table(self) -> RouteTable:
        return self._table

    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def load_routes_file(path: Path) -> RouteTable:
    text = path.read_text()
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RouteError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    try:
        return table_from_document(doc)
    except RouteError as exc:
        raise RouteError(f"{path}: {exc}") from None


class FileSource(Listeners):
    """A routes file, checked every `poll_s` seconds; a broken edit keeps the last good table."""

    def __init__(self, path: Path, poll_s: float = 5.0) -> None:
        super().__init__()
        self.path = path
        self.poll_s = poll_s
        self._table = load_routes_file(path)  # fail fast at startup
        self._stamp = self._mtime()
        self._task: asyncio.Task[None] | None = None

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def table(self) -> RouteTable:
        return self._table

    def ready(self) -> bool:
        return True  # read (or refused) at construction

    def reload_if_changed(self) -> bool:
        stamp = self._mtime()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self._table = load_routes_file(self.path)
        except (OSError, RouteError) as exc:
            log.warning("keeping the previous routes: %s", exc)
            return False
        log.info("routes reloaded from %s: %s", self.path, ", ".join(self._table.models()))
        self.notify()
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            self.reload_if_changed()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class CombinedSource:
    def __init__(self, sources: Sequence[RouteSource]) -> None:
        self.sources = list(sources)

    def subscribe(self, listener: Callable[[], None]) -> None:
        for source in self.sources:
            if isinstance(source, Notifying):
                source.subscribe(listener)

    def table(self) -> RouteTable:
        table = RouteTable()
        for source in self.sources:
            table = table.merged(source.table())
        return table

    def ready(self) -> bool:
        return all(source.ready() for source in self.sources)

    async def start(self) -> None:
        for source in self.sources:
            await source.start()

    async def stop(self) -> None:
        for source in self.sources:
            await source.stop()

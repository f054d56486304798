"""What the kubelet does to a Secret or ConfigMap volume, for tests of code that reads one, and
the Service environment variables it gives a container (`service_link_env`).

The kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go) never rewrites a file in place:
each update writes the payload into a new hidden folder `..<timestamp>`, points a new symlink
`..data_tmp` at it, renames that over `..data` (one atomic step), makes sure each key is a
symlink `<key> -> ..data/<key>`, and removes the previous folder. A reader that opens `<key>`
sees the old content or the new, never a mix; the resolved path (and inode) of `<key>`
changes with every update.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

_serial = itertools.count()


def write_volume(volume: Path, payload: dict[str, str]) -> None:
    """Publish `payload` (key -> content) in `volume` as the kubelet does."""
    volume.mkdir(parents=True, exist_ok=True)
    data = volume / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    folder = volume / f"..2026_01_01_00_00_00.{next(_serial)}"
    folder.mkdir()
    for key, content in payload.items():
        (folder / key).write_text(content)
    tmp = volume / "..data_tmp"
    os.symlink(folder.name, tmp)
    os.rename(tmp, data)
    for key in payload:
        link = volume / key
        if not link.is_symlink():
            os.symlink(f"..data/{key}", link)
    if old is not None:
        shutil.rmtree(volume / old)


def service_link_env(pod: dict[str, Any], services: list[dict[str, Any]]) -> dict[str, str]:
    """The Docker-links variables the kubelet adds to every container of `pod` (a pod spec as
    stored: enableServiceLinks defaults to true) for the Services of its namespace with a
    cluster IP (pkg/kubelet/envvars/envvars.go FromServices): NAME_SERVICE_HOST,
    NAME_SERVICE_PORT[_PORTNAME], NAME_PORT=tcp://IP:PORT, NAME_PORT_PORT_PROTO[_ADDR|_PORT|
    _PROTO], NAME the Service's name upper-cased, '-' as '_'."""
    if not pod.get("enableServiceLinks", True):
        return {}
    env: dict[str, str] = {}
    for svc in services:
        spec = svc.get("spec") or {}
        ip = spec.get("clusterIP")
        if not ip or ip == "None" or not spec.get("ports"):
            continue
        name = svc["metadata"]["name"].upper().replace("-", "_")
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(spec["ports"][0]["port"])
        for port in spec["ports"]:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                    port["port"])
        first = spec["ports"][0]
        proto = first.get("protocol", "TCP").lower()
        env[f"{name}_PORT"] = f"{proto}://{ip}:{first['port']}"
        for port in spec["ports"]:
            proto = port.get("protocol", "TCP")
            prefix = f"{name}_PORT_{port['port']}_{proto.upper()}"
            env[prefix] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{prefix}_PROTO"] = proto.lower()
            env[f"{prefix}_PORT"] = str(port["port"])
            env[f"{prefix}_ADDR"] = ip
    return env

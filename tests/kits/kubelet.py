"""What the kubelet does to a Secret or ConfigMap volume, for tests of code that reads one.

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

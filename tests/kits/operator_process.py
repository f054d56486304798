"""The operator as its own process against the emulator: `kopf run ... -m this module` adds what
the in-process tests set through kopf's API (log in to the emulator, no CRD scanning, which
kmock 0.8 cannot answer). The emulator's URL comes in `SPECSERVE_TEST_API_URL`."""

from __future__ import annotations

import os
from typing import Any

import kopf


@kopf.on.login()
def _login_to_the_emulator(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=os.environ["SPECSERVE_TEST_API_URL"])


@kopf.on.startup()
def _no_scanning(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.scanning.disabled = True

"""Helpers shared by the engine tests."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from specserve_contract import POLICY_PATH as POLICY


@dataclass(frozen=True)
class Control:
    """The spec engine's control port and the token that authorises policy changes."""

    url: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def policy_version(self) -> int:
        return httpx.get(self.url + POLICY, timeout=10).json()["policy"]["version"]

    def set_policy(self, **fields: object) -> int:
        """PUT a policy one version above the engine's; returns the new version."""
        version = self.policy_version() + 1
        r = httpx.put(self.url + POLICY, json={"version": version, **fields},
                      headers=self.auth, timeout=10)
        assert r.status_code == 200, r.text
        return version

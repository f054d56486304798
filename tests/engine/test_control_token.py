"""The control token from a file the kubelet replaces (a Secret volume), without an engine:
re-read on change, at most every TOKEN_CHECK_INTERVAL_S while the offered token matches, at
once when it does not; the env var as the fallback of a local `specserve serve`."""

from __future__ import annotations

from pathlib import Path

from specserve_contract import ENV_CONTROL_TOKEN, ENV_CONTROL_TOKEN_FILE
from specserve_engine.policy import Policy
from specserve_engine.policy_store import (
    PolicyStore,
    StaticToken,
    TokenFile,
    control_token,
)
from tests.kits.kubelet import write_volume


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _body(version: int) -> bytes:
    return f'{{"version": {version}}}'.encode()


def test_the_token_is_read_from_the_secret_volume(tmp_path: Path) -> None:
    write_volume(tmp_path, {"token": "first\n"})
    token = TokenFile(str(tmp_path / "token"))
    assert token.get() == "first"  # the trailing newline of `kubectl create secret --from-file`


def test_a_swapped_file_is_seen_after_the_interval_or_when_asked(tmp_path: Path) -> None:
    clock = Clock()
    write_volume(tmp_path, {"token": "first"})
    token = TokenFile(str(tmp_path / "token"), check_interval_s=5.0, clock=clock)
    write_volume(tmp_path, {"token": "second"})
    assert token.get() == "first"  # checked less than 5 s ago
    clock.now += 5.0
    assert token.get() == "second"
    write_volume(tmp_path, {"token": "third"})
    assert token.get(fresh=True) == "third"


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    clock = Clock()
    write_volume(tmp_path, {"token": "first"})
    token = TokenFile(str(tmp_path / "token"), clock=clock)
    for _ in range(3):
        clock.now += 10
        assert token.get(fresh=True) == "first"
    assert token.reloads == 1


def test_an_unreadable_file_keeps_the_token_and_an_empty_one_has_none(tmp_path: Path) -> None:
    write_volume(tmp_path, {"token": "first"})
    token = TokenFile(str(tmp_path / "token"))
    (tmp_path / "token").unlink()
    assert token.get(fresh=True) == "first"
    write_volume(tmp_path, {"token": ""})
    assert token.get(fresh=True) is None
    assert "is empty" in token.missing()
    never = TokenFile(str(tmp_path / "absent"))
    assert never.get() is None and ENV_CONTROL_TOKEN_FILE in never.missing()


def test_the_file_wins_over_the_env_var_which_remains_the_fallback(tmp_path: Path) -> None:
    write_volume(tmp_path, {"token": "from-file"})
    env = {ENV_CONTROL_TOKEN_FILE: str(tmp_path / "token"), ENV_CONTROL_TOKEN: "from-env"}
    assert control_token(env).get() == "from-file"
    fallback = control_token({ENV_CONTROL_TOKEN: "from-env"})
    assert isinstance(fallback, StaticToken) and fallback.get() == "from-env"
    assert control_token({}).get() is None


def test_a_rotated_token_refuses_the_old_one_and_accepts_the_new(tmp_path: Path) -> None:
    """The Secret deleted and recreated: the new token works at once (a mismatch looks at the
    file before it refuses), the old one stops working (now, or within the check interval
    when nobody has offered the new one yet)."""
    clock = Clock()
    write_volume(tmp_path, {"token": "old"})
    store = PolicyStore(Policy(version=1), engine_k_max=5,
                        token=TokenFile(str(tmp_path / "token"), clock=clock))
    assert store.put(_body(2), "Bearer old").status == 200
    write_volume(tmp_path, {"token": "new"})
    assert store.put(_body(3), "Bearer new").status == 200
    assert store.put(_body(4), "Bearer old").status == 401
    # Rotated again, and the old token comes first: accepted until the interval is over.
    write_volume(tmp_path, {"token": "newer"})
    assert store.put(_body(4), "Bearer new").status == 200
    clock.now += 5.0
    reply = store.put(_body(5), "Bearer new")
    assert reply.status == 401 and reply.body["error"] == "missing or wrong bearer token"
    assert store.put(_body(5), "Bearer newer").status == 200
    assert store.policy.version == 5


def test_non_ascii_tokens_are_refused_not_crashed_on(tmp_path: Path) -> None:
    store = PolicyStore(Policy(version=1), engine_k_max=5, token="t0ken")
    assert store.put(_body(2), "Bearer tökén").status == 401

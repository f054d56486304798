"""Route sources and the command line: flags, routes files (and their reload), refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from specserve_gateway import __main__ as cli
from specserve_gateway.routing import Route, RouteError
from specserve_gateway.sources import CombinedSource, FileSource, StaticSource

A, B = "http://10.0.0.1:8000", "http://10.0.0.2:8000"


def test_routes_file_yaml_and_json(tmp_path: Path) -> None:
    yml = tmp_path / "routes.yaml"
    yml.write_text(f"models:\n  tiny: [{A}]\n  chat: {{backends: [{B}], upstreamModel: q}}\n")
    jsn = tmp_path / "routes.json"
    jsn.write_text(json.dumps({"models": {"tiny": [B]}}))
    assert FileSource(yml).table().get("chat") == Route("chat", (B,), "q")
    assert FileSource(jsn).table().get("tiny") == Route("tiny", (B,))


def test_routes_file_reload_keeps_the_last_good_table(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(f"models: {{tiny: [{A}]}}\n")
    source = FileSource(path)
    assert source.reload_if_changed() is False  # unchanged
    path.write_text(f"models: {{tiny: [{A}, {B}]}}\n")
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    assert source.reload_if_changed() is True
    assert source.table().get("tiny") == Route("tiny", (A, B))
    path.write_text("models: [not, a, mapping]\n")
    os.utime(path, (2, 2))
    assert source.reload_if_changed() is False
    assert source.table().get("tiny") == Route("tiny", (A, B))


def test_a_broken_routes_file_fails_at_startup_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("models: {tiny: [nope]}\n")
    with pytest.raises(RouteError, match=r"routes\.yaml: backend URL"):
        FileSource(path)


def test_cli_combines_flags_and_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(f"models: {{tiny: [{B}], other: [{B}]}}\n")
    args = cli.build_parser().parse_args(
        ["--backend", f"tiny={A}", "--routes", str(path), "--upstream-model", "tiny=t"])
    source = cli.build_source(args)
    assert isinstance(source, CombinedSource)
    assert source.table().get("tiny") == Route("tiny", (A, B), "t")
    assert source.table().models() == ["other", "tiny"]
    single = cli.build_source(cli.build_parser().parse_args(["--backend", f"tiny={A}"]))
    assert isinstance(single, StaticSource)


def test_cli_shutdown_timeout_defaults_to_the_read_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After SIGTERM uvicorn lets requests finish for --shutdown-timeout seconds (default
    --read-timeout), not a fixed 30 s that would cut long streams."""
    def timeout(*argv: str) -> float:
        return cli.shutdown_timeout(cli.build_parser().parse_args(list(argv)))

    assert timeout() == 600.0
    assert timeout("--read-timeout", "120") == 120.0
    assert timeout("--read-timeout", "120", "--shutdown-timeout", "45") == 45.0
    seen: dict[str, object] = {}
    monkeypatch.setattr(cli.uvicorn, "run", lambda app, **kw: seen.update(kw))
    assert cli.main(["--backend", f"tiny={A}", "--read-timeout", "90"]) == 0
    assert seen["timeout_graceful_shutdown"] == 90.0


def test_cli_refuses_to_start_without_routes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "no routes" in capsys.readouterr().err
    assert cli.main(["--backend", "tiny"]) == 2
    assert "MODEL=URL" in capsys.readouterr().err


def test_cli_kubernetes_outside_a_pod_says_what_to_do(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["--kubernetes"]) == 2
    assert "--kube-api" in capsys.readouterr().err

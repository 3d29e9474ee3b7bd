"""The docs name the tests that prove each property (docs/architecture.md's table): every
test file and test function they name exists, so a renamed or deleted test cannot leave a
property pointing at nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?")


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_test_the_docs_name_exists() -> None:
    named, missing = 0, []
    for doc in _documents():
        for path, name in REFERENCE.findall(doc.read_text(encoding="utf-8")):
            named += 1
            source = ROOT / path
            if not source.is_file():
                missing.append(f"{doc.name}: {path}")
            elif name and not re.search(rf"^\s*def {name}\(", source.read_text("utf-8"), re.M):
                missing.append(f"{doc.name}: {path}::{name}")
    assert named > 100, "the property table's references were not found"
    assert not missing, missing

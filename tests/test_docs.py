"""A clone is self-contained: what the docs, code and tests cite lives in the repository."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a folder beside the checkout that a clone of the repository does not have (written as
# a pattern, so this file does not cite it)
OUTSIDE = re.compile(r"\.\./shared\b")


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not names:  # not a git checkout (an unpacked archive): every file of the tree
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts]
    return [ROOT / n for n in names
            if n.endswith((".py", ".md", ".toml", ".cfg", ".txt")) or n in ("Makefile", ".ci/run")]


def test_nothing_points_outside_the_repository():
    outside = [f"{path.relative_to(ROOT)}:{n}" for path in _tracked_text_files() if path.is_file()
               for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
               if OUTSIDE.search(line)]
    assert outside == []


def test_every_cited_docs_file_exists():
    cited = {m for path in _tracked_text_files() if path.is_file()
             for m in re.findall(r"docs/[A-Za-z_]+\.md", path.read_text(errors="replace"))}
    assert {"docs/DESIGN.md", "docs/METRICS.md", "docs/REFERENCES.md", "docs/ARCHITECTURE.md"} <= cited
    assert sorted(c for c in cited if not (ROOT / c).is_file()) == []

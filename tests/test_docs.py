"""The algorithm reference is inside the repository and every pointer into it lands on a section."""

import re
import sys
from pathlib import Path

from divalign import advantages, objectives

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"docs/([a-z_]+\.md)#([a-z0-9-]+)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in doc.read_text().splitlines() if line.startswith("#")}


def test_every_reference_into_docs_lands_on_a_section():
    sections = {doc.name: anchors(doc) for doc in (ROOT / "docs").glob("*.md")}
    files = list((ROOT / "src").rglob("*.py")) + list((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    broken = [f"{path.relative_to(ROOT)}: docs/{doc}#{anchor}"
              for path in files for doc, anchor in REFERENCE.findall(path.read_text())
              if anchor not in sections.get(doc, set())]
    assert not broken, "\n".join(broken)
    # within a doc, [text](#anchor) links too
    for doc in (ROOT / "docs").glob("*.md"):
        missing = [a for a in re.findall(r"\]\(#([a-z0-9-]+)\)", doc.read_text()) if a not in sections[doc.name]]
        assert not missing, (doc.name, missing)


def test_every_objective_and_estimator_points_to_its_section():
    sections = anchors(ROOT / "docs" / "algorithms.md")
    functions = [objectives.get(name).loss for name in objectives.names()]
    functions += [advantages.get(name).fn for name in advantages.names()]
    for fn in functions:
        doc = sys.modules[fn.__module__].__doc__ or ""
        cited = [anchor for name, anchor in REFERENCE.findall(doc) if name == "algorithms.md"]
        assert cited and all(a in sections for a in cited), (fn.__module__, cited)


def test_no_docstring_cites_a_file_outside_the_repository():
    outside = [str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*.py") if "research/" in p.read_text()]
    assert not outside, outside

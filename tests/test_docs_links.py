"""Every relative link of the README and the docs pages points at a file of the checkout, and every docs page is
reachable from the README in one link (the README is short; what it dropped must stay one click away)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


BLOCK = re.compile(r"<!-- quickstart:begin -->.*?<!-- quickstart:end -->", re.S)


def _targets(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def _relative_links(page: Path) -> list[tuple[Path, str]]:
    """(folder it resolves from, target). The quick-start block is the README's byte for byte (a test runs it), so
    inside docs/quickstart.md its links are the README's, relative to the repository root."""
    text = page.read_text()
    block = "".join(BLOCK.findall(text)) if page.parent != REPO else ""
    return [(REPO, t) for t in _targets(block)] + [
        (page.parent, t) for t in _targets(BLOCK.sub("", text) if block else text)
    ]


def test_relative_links_resolve() -> None:
    broken = [
        f"{page.relative_to(REPO)}: {target}"
        for page in _pages()
        for base, target in _relative_links(page)
        if not (base / target.split("#", 1)[0]).exists()
    ]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_one_link_from_the_readme() -> None:
    linked = {(base / t.split("#", 1)[0]).resolve() for base, t in _relative_links(REPO / "README.md")}
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_readme_stays_short() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 250

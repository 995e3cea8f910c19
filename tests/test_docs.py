"""The README and docs/: every relative link resolves, the README stays short and maps every page.

For README.md and each docs/*.md page, every Markdown link or image `[text](target)` outside code whose
target is relative (not http(s)://, mailto: or another scheme) must name a file that exists, relative to
the page's folder; a `#anchor` (alone or after a file name) must be a heading of the target Markdown file,
slugged as GitHub does.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 150

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) or ![alt](target), with an optional title: [text](target "title")
LINK = re.compile(r"!?\[(?P<text>(?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*(?P<target><[^>]*>|[^)\s]*)(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def prose(text: str) -> str:
    """The page without fenced code blocks (blank lines instead, to keep line numbers) or inline code."""
    lines, fence = [], None
    for line in text.split("\n"):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), "\n".join(lines))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text(encoding="utf-8")).split("\n"):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image outside code."""
    text = prose(page.read_text(encoding="utf-8"))
    found = []
    for match in LINK.finditer(text):
        target = match.group("target").strip("<>")
        found.append((text.count("\n", 0, match.start()) + 1, target))
    return found


def broken(page: Path) -> list[str]:
    """One message per relative link of the page that does not resolve."""
    problems = []
    for line, target in links(page):
        where = f"{page_id(page)}:{line}: link ({target})"
        if not target:
            problems.append(f"{where}: empty target")
            continue
        if SCHEME.match(target) or target.startswith("//"):
            continue  # http(s)://, mailto: ...: not checked here
        path_part, _, anchor = target.partition("#")
        path_part = path_part.split("?", 1)[0]
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            problems.append(f"{where}: no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}")
            continue
        if anchor:
            if resolved.is_dir() or resolved.suffix.lower() != ".md":
                problems.append(f"{where}: an anchor into {page_id(resolved)}, which is not a Markdown file")
            elif anchor not in anchors(resolved):
                problems.append(f"{where}: no heading #{anchor} in {page_id(resolved)}")
    return problems


def test_docs_folder_has_pages():
    assert sorted(DOCS.glob("*.md")), "docs/ holds no Markdown page"


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_every_relative_link_resolves(page):
    problems = broken(page)
    assert not problems, f"{page_id(page)}: {len(problems)} broken link(s):\n" + "\n".join(problems)


def test_readme_is_short():
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines, more than {README_MAX_LINES}: move reference to docs/"


def test_every_docs_page_is_linked_from_the_readme():
    linked = set()
    for _, target in links(README):
        path_part = target.partition("#")[0]
        if path_part and not SCHEME.match(target):
            linked.add((README.parent / path_part).resolve())
    missing = [page_id(page) for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked]
    assert not missing, "README.md links no page: " + ", ".join(missing)


def test_the_checker_sees_a_broken_link(tmp_path, monkeypatch):
    """The checker itself: a missing file, a missing anchor and a link inside code."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Slices, exports and merges\n## Numerics & speed\n## Numerics & speed\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#slices-exports-and-merges) [ok](docs/a.md#numerics--speed-1) [web](https://x.y/z)\n"
        "[gone](docs/b.md) [no anchor](docs/a.md#nothing) [self](#nowhere)\n"
        "`[code](not/checked.md)`\n```\n[code](not/checked.md)\n```\n"
    )
    problems = broken(page)
    assert len(problems) == 3, problems
    assert "README.md:2: link (docs/b.md)" in problems[0]
    assert "no heading #nothing in docs/a.md" in problems[1]
    assert "no heading #nowhere in README.md" in problems[2]

"""Reading the project's markdown in tests: its files, table rows, links and GitHub-style anchors."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^()\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def markdown_files() -> list[Path]:
    """README.md, docs/*.md, and the READMEs beside the notebook and the deployment files."""
    found = [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md"), *(ROOT / "notebooks").glob("*.md"),
             *(ROOT / "deploy").glob("**/*.md")]
    return sorted(set(found))


def without_code_blocks(text: str) -> str:
    """The text with fenced code blocks blanked (a `# comment` in a bash block is no heading)."""
    return FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)


def table_cells(line: str) -> list[str] | None:
    """A table row's cells (pipes inside backticks or escaped do not split), or None."""
    stripped = line.strip()
    if not stripped.startswith("|"):
        return None
    cells, current, in_code, escaped = [], "", False, False
    for char in stripped[1:]:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            current, escaped = current + char, True
        elif char == "`":
            current, in_code = current + char, not in_code
        elif char == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        cells.append(current.strip())
    return cells


def is_separator(cells: list[str]) -> bool:
    return all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells)


def code_spans(cell: str) -> list[str]:
    """What stands in backticks in a cell."""
    return [span[1:-1] for span in INLINE_CODE.findall(cell)]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a document, repeated headings numbered as GitHub does (-1, -2)."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(without_code_blocks(text)):
        slug = anchor(match.group(2))
        if slug in seen:
            seen[slug] += 1
            found.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            found.add(slug)
    return found


def relative_links(text: str) -> list[str]:
    """Link and image targets outside code that are not web addresses (`](target)`)."""
    prose = INLINE_CODE.sub("", without_code_blocks(text))
    return [target for target in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]

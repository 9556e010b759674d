"""README.md stays a newcomer's guide, and every relative link in the docs leads somewhere."""

from __future__ import annotations

from urllib.parse import unquote

from tests.markdown import ROOT, anchors, markdown_files, relative_links

README_MAX_LINES = 300


def test_the_readme_is_a_guide_not_the_reference() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, (f"README.md has {len(lines)} lines: move reference text to "
                                           f"docs/ and link to it (at most {README_MAX_LINES - 1})")


def test_the_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text[: text.index("\n## ")]
    assert "make run " in head and "make test " in head


def test_every_relative_link_resolves_to_a_file_and_its_anchor() -> None:
    broken = []
    headings: dict[str, set[str]] = {}
    for page in markdown_files():
        for target in relative_links(page.read_text(encoding="utf-8")):
            path, _, fragment = unquote(target).partition("#")
            linked = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not linked.exists():
                broken.append(f"{where}: no such file")
            elif fragment and linked.suffix == ".md":
                if str(linked) not in headings:
                    headings[str(linked)] = anchors(linked.read_text(encoding="utf-8"))
                if fragment not in headings[str(linked)]:
                    broken.append(f"{where}: no heading with the anchor #{fragment}")
    assert not broken, "broken links:\n" + "\n".join(broken)

"""The README and docs/*.md link only to what exists: every relative link names a file of the
repository and, after `#`, a heading of that file (as GitHub spells its anchor); every docs file
says what it holds and links back to the README in its first paragraph."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def prose(text: str) -> str:
    """The text without its fenced code blocks: a `# comment` in a shell block is no heading."""
    return FENCE.sub("", text)


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown text's headings: lower case, punctuation dropped, spaces to
    hyphens, and -1, -2, ... after a repeated one."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file or heading does not exist."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto: are not this repository's to check
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text())):
            broken.append(target)
    return broken


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_of_the_readme_and_docs_resolves():
    broken = {page.name: broken_links(page) for page in pages()}
    assert {name: links for name, links in broken.items() if links} == {}


def test_every_docs_file_says_what_it_holds_and_links_back_to_the_readme():
    for page in pages()[1:]:
        title, first_paragraph = page.read_text().split("\n\n")[:2]
        assert title.startswith("# ") and "](../README.md)" in first_paragraph, page.name


def test_the_readme_links_every_docs_file():
    readme = ROOT.joinpath("README.md").read_text()
    assert [p.name for p in pages()[1:] if f"](docs/{p.name}" not in readme] == []


def test_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Faults and hostile input: what is tested\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Relays: one member per host\n\n"
        "[ok](other.md#faults-and-hostile-input-what-is-tested) [ok](#relays-one-member-per-host) "
        "[ok](https://example.org/x) [gone](missing.md) [gone](other.md#nowhere) [gone](#relays)\n"
        "```bash\n# Not a heading\necho '[gone](#not-a-heading)'\n```\n"
    )
    assert broken_links(page) == ["missing.md", "other.md#nowhere", "#relays"]

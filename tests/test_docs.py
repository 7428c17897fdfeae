"""The documentation holds together: every relative link and anchor in README.md and docs/*.md
resolves (GitHub's heading slugs), every node has a section in docs/nodes.md, the README stays short."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where links are links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than '-' and '_'
    removed, each space a '-' (github/cmark-gfm's rule, as github-slugger implements it)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[`*]|<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2 ... suffixes for repeated headings."""
    seen: Dict[str, int] = {}
    found = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> List[Tuple[str, Path, str]]:
    """(link as written, target file, anchor) of every link that is not to another site."""
    out = []
    for target in LINK.findall(_prose(path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        out.append((target, (path.parent / file_part).resolve() if file_part else path, anchor))
    return out


def test_slug_rules():
    assert github_slug("ComfyUI versions tested in CI") == "comfyui-versions-tested-in-ci"
    assert github_slug("CVD/camera") == "cvdcamera"
    assert github_slug("`CVD_ModelLoader`") == "cvd_modelloader"
    assert github_slug("Export for 3-D reconstruction") == "export-for-3-d-reconstruction"
    assert github_slug("Memory: the CVD model and CV-VAE under ComfyUI's model management") == \
        "memory-the-cvd-model-and-cv-vae-under-comfyuis-model-management"


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for written, target, anchor in relative_links(page):
            where = f"{page.relative_to(ROOT)}: ({written})"
            if not target.exists():
                broken.append(f"{where}: no file {target}")
            elif anchor and (target.suffix != ".md" or anchor not in anchors(target)):
                broken.append(f"{where}: no heading with anchor #{anchor} in {target.name}")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_docs_page():
    linked = {target for _, target, _ in relative_links(ROOT / "README.md")}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md links no docs page {missing}"


def test_every_node_has_a_section_in_nodes_md():
    from tests.support.pack_info import pack_schemas

    sections = anchors(ROOT / "docs" / "nodes.md")
    missing = [s.node_id for s in pack_schemas() if github_slug(s.node_id) not in sections]
    assert not missing, f"docs/nodes.md has no section for {missing}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"

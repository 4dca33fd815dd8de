#!/usr/bin/env python3
"""Every relative link in README.md, CHANGELOG.md and docs/*.md resolves: the file exists and,
for `#anchor`, a heading of that file has that GitHub slug; and no link is malformed so that
Markdown shows it as text (`[text]#anchor)`, `[text] (target)`). Run by scripts/test.sh."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def slug(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # GitHub drops punctuation, keeps word chars, - and _
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set:
    found, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        m = re.match(r"^#{1,6} (.*)", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            found.add(s if n == 0 else f"{s}-{n}")
    return found


MALFORMED = re.compile(r"\[[^\]\n]+\](?:#[\w-]*\)|[ \t]+\([^)\s]+\))")


def main() -> int:
    # The checker catches what it claims to (a pattern that matched nothing would pass anything).
    assert MALFORMED.search("see [OpenAPI contract]#openapi-contract).")
    assert MALFORMED.search("see [the API] (docs/api.md)")
    assert not MALFORMED.search("see [the API](docs/api.md#x) and [x]: y")
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = []
    for f in files:
        text = re.sub(r"```.*?```", "", f.read_text(), flags=re.S)
        text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
        for broken in MALFORMED.findall(text):
            bad.append(f"{f.relative_to(ROOT)}: {broken}: malformed link (written [text](target))")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (f.parent / path).resolve() if path else f
            if not dest.exists():
                bad.append(f"{f.relative_to(ROOT)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{f.relative_to(ROOT)}: {target}: no such heading")
    for b in bad:
        print(b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

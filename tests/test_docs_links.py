"""Every relative link in README.md and docs/*.md leads somewhere: the file exists, and a #anchor is a heading of
the target file (GitHub's slugs: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats)."""

import glob
import os
import re

from helpers import ROOT


def slugs(path):
    found, seen = set(), {}
    text = re.sub(r"^```.*?^```", "", open(path).read(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    broken = []
    for name in ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        text = re.sub(r"^```.*?^```", "", open(os.path.join(ROOT, name)).read(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(ROOT, os.path.dirname(name), path or os.path.basename(name)))
            if not os.path.exists(full):
                broken.append(f"{name}: {target} (no such file)")
            elif anchor and anchor not in slugs(full):
                broken.append(f"{name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)

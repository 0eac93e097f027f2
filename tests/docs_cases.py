"""Reading README.md and docs/ for the docs tests: the pages, their fenced blocks and headings,
and checks that what a page names (repository files, Python imports and names, relative links)
exists. Each check takes a page's text and returns its problems, so that a test can also hand it
a wrong text and see the problem named."""

import glob
import importlib
import os
import re

from repo_paths import REPO

PAGES = ["README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))
)

QUICK = ["bash", "quick"]  # the info string of a shell block that the docs test runs

FENCE = re.compile(r"^(`{3,})\s*(.*)$")
# a file under one of these folders: the only paths a page names that must exist in a clone (the
# others, such as weights/ or mydata/, are the reader's)
FOLDERS = "configs|tools|tests|csrc|projects"
EXTENSIONS = "yaml|yml|py|sh|h|cpp|cu|md|json|txt"
REPO_FILE = re.compile(rf"(?<![\w./-])((?:{FOLDERS})/[\w./{{}},-]*\.(?:{EXTENSIONS}))")
# a config named without its folder, as in a table of configs: `ddetr_swin_t.yaml`
BARE_CONFIG = re.compile(r"`([\w-]+\.ya?ml)`")
CHECKED_PACKAGES = ("deformable_detr", "detectron2")
IMPORT_LINE = re.compile(r"^\s*(?:from\s+(\w+)[\w.]*\s+import\s+\S.*|import\s+(\w+)[\w.]*.*)$")
INLINE_NAME = re.compile(r"`(deformable_detr(?:\.\w+)+)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*$")


def read(page):
    with open(os.path.join(REPO, page)) as f:
        return f.read()


def blocks(text):
    """(info string, code, line number of the opening fence) of every fenced block."""
    found = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith(match.group(1)):
            end += 1
        found.append((match.group(2), "\n".join(lines[i + 1 : end]), i + 1))
        i = end + 1
    return found


def prose(text):
    """The text without its fenced blocks (a `#` comment in a block is no heading)."""
    kept, inside = [], None
    for line in text.split("\n"):
        match = FENCE.match(line)
        if inside is None and match:
            inside = match.group(1)
        elif inside is not None and line.startswith(inside):
            inside = None
        elif inside is None:
            kept.append(line)
    return "\n".join(kept)


def anchors(text):
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for line in prose(text).split("\n"):
        match = HEADING.match(line)
        if match:
            words = re.sub(r"[^\w\- ]", "", match.group(2).lower())
            found.add(words.replace(" ", "-"))
    return found


def expand_braces(path):
    """configs/x_{a,b}.yaml -> [configs/x_a.yaml, configs/x_b.yaml], as the shell expands it."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [
        expanded
        for choice in match.group(1).split(",")
        for expanded in expand_braces(path[: match.start()] + choice + path[match.end() :])
    ]


def missing_files(text):
    """The repository files the text names that do not exist."""
    named = {p for token in REPO_FILE.findall(text) for p in expand_braces(token)}
    named |= {f"configs/{name}" for name in BARE_CONFIG.findall(text)}
    return sorted(p for p in named if not os.path.exists(os.path.join(REPO, p)))


def failing_imports(text):
    """(line, error) of each failing import of deformable_detr or detectron2 in a python block."""
    failures = []
    for info, code, _ in blocks(text):
        if info.split()[:1] != ["python"]:
            continue
        for line in code.split("\n"):
            match = IMPORT_LINE.match(line)
            if match and (match.group(1) or match.group(2)) in CHECKED_PACKAGES:
                try:
                    exec(line.strip(), {})
                except Exception as e:  # the error is the finding
                    failures.append((line.strip(), f"{type(e).__name__}: {e}"))
    return failures


def resolves(name):
    """Whether a dotted name is a module, or an attribute of the longest module it starts with."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attribute in parts[i:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def unresolved_names(text):
    """The `deformable_detr.x.y` names of the text's inline code that resolve to nothing."""
    return sorted({n for n in INLINE_NAME.findall(prose(text)) if not resolves(n)})


def broken_links(page, text):
    """The relative links of a page (its path, its text) whose file, or heading (#anchor), does not
    exist; a link of an anchor alone is to the text's own headings."""
    broken = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:
            headings = anchors(text)
        else:
            file = os.path.normpath(os.path.join(REPO, os.path.dirname(page), path))
            if not os.path.exists(file):
                broken.append(target)
                continue
            headings = anchors(read(file)) if file.endswith(".md") else set()
        if anchor and anchor not in headings:
            broken.append(target)
    return broken

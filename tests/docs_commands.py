"""The shell commands the README and docs/ show, read from their ```bash
blocks: each with the folder it runs in (after the block's ``cd``) and its
words. ``python tests/docs_commands.py --modules`` prints the package
commands (``python -m speechbrain_petl...``), one per line, for CI."""

import pathlib
import re
import shlex
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
#: The pages whose commands are checked.
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`(python -m speechbrain_petl[^`]*)`")


def commands(pages=PAGES):
    """``[(page, folder, words)]`` of every command line of the pages'
    ```bash blocks (continuation lines joined, comments dropped)."""
    found = []
    for page in pages:
        text = page.read_text()
        for block in FENCE.findall(text):
            folder = REPO
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                if not line or line.startswith("#"):
                    continue
                for part in line.split(" && "):
                    words = shlex.split(part)
                    if words[:1] == ["cd"]:
                        folder = (folder / words[1]).resolve()
                    else:
                        found.append((page, folder, words))
        for line in INLINE.findall(FENCE.sub("", text)):
            found.append((page, REPO, shlex.split(line)))
    return found


def package_modules(pages=PAGES):
    """The modules run as ``python -m speechbrain_petl...`` on the pages, sorted."""
    return sorted({
        words[words.index("-m") + 1]
        for _, _, words in commands(pages)
        if "-m" in words and words[words.index("-m") + 1].startswith("speechbrain_petl")
    })


if __name__ == "__main__":
    if sys.argv[1:] != ["--modules"]:
        raise SystemExit("usage: python tests/docs_commands.py --modules")
    print("\n".join(package_modules()))

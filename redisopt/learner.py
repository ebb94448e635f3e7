"""Learner editions: the committed notebooks are solved; learners get stubs in their place.

Code between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` is replaced by a stub that raises
NotImplementedError, indented like the marker; outputs are cleared so nothing gives the answer away.
Run ``python -m redisopt.learner SRC_DIR DEST_DIR`` (``make learner``, and ``make lab`` before it
opens the learner editions). A learner's copy is their work: an existing file is kept, never
overwritten, unless ``--force`` is given (delete one file to get a fresh edition of that chapter).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("연습 문제: 여기에 답을 작성하세요")'
_BLOCK = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[ \t]*\n.*?^[ \t]*{re.escape(END)}[ \t]*$", re.S | re.M)


def strip_solutions(source: str) -> str:
    """Replace every solution block with the stub; an unclosed block is an error, not a leak."""
    stripped = _BLOCK.sub(lambda m: m.group(1) + STUB, source)
    if BEGIN in stripped or END in stripped:
        raise ValueError("unbalanced ### BEGIN SOLUTION / ### END SOLUTION markers")
    return stripped


def learner_edition(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    out = nbformat.from_dict(nb)
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs = []
            cell.execution_count = None
    return out


def write_editions(src: Path, dest: Path, *, force: bool = False) -> dict[Path, bool]:
    """Write a learner edition of every chapter in ``src`` to ``dest``; maps each target to written?

    Existing targets are kept (a learner's answers live there) unless ``force``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = {}
    for path in sorted(src.glob("[0-9]*.ipynb")):
        target = dest / path.name
        if target.exists() and not force:
            written[target] = False
            continue
        nbformat.write(learner_edition(nbformat.read(path, as_version=4)), target)
        written[target] = True
    return written


def main(argv: list[str]) -> int:
    force = "--force" in argv
    args = [a for a in argv if a != "--force"]
    if len(args) != 2:
        print("usage: python -m redisopt.learner [--force] SRC_DIR DEST_DIR", file=sys.stderr)
        return 2
    for target, written in write_editions(Path(args[0]), Path(args[1]), force=force).items():
        print(f"{target}" if written else f"{target} (kept: your copy; delete it or use --force for a fresh one)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

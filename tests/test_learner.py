"""Learner editions: solutions out, stubs in, nothing else changed."""

from __future__ import annotations

import nbformat
import pytest

from redisopt.learner import STUB, learner_edition, strip_solutions, write_editions
from tests.helpers import ROOT


def test_strip_keeps_indentation_and_surroundings() -> None:
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x * 2\n    ### END SOLUTION\n\nprint(f)"
    assert strip_solutions(source) == f"def f(x):\n    {STUB}\n\nprint(f)"


def test_unbalanced_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        strip_solutions("### BEGIN SOLUTION\nanswer = 42\n")


def test_learner_edition_of_chapter_one_hides_every_answer() -> None:
    nb = nbformat.read(ROOT / "notebooks" / "01_data_structures.ipynb", as_version=4)
    learner = learner_edition(nb)
    sources = [c.source for c in learner.cells if c.cell_type == "code"]
    assert not any("### BEGIN SOLUTION" in s for s in sources)
    assert sum(STUB in s for s in sources) >= 2
    assert all(not c.outputs for c in learner.cells if c.cell_type == "code")
    assert len(learner.cells) == len(nb.cells)
    joined = "".join(sources)
    assert 'r.object("encoding", key) in' not in joined and ':bio"' not in joined  # the answers are gone


def test_learner_copies_are_kept_unless_forced(tmp_path) -> None:
    src, dest = ROOT / "notebooks", tmp_path / "learner"
    first = write_editions(src, dest)
    assert first and all(first.values())
    mine = next(iter(first))
    mine.write_text("my answers", encoding="utf-8")
    assert not any(write_editions(src, dest).values())
    assert mine.read_text(encoding="utf-8") == "my answers"  # a learner's work survives make lab
    assert all(write_editions(src, dest, force=True).values())
    assert "my answers" not in mine.read_text(encoding="utf-8")

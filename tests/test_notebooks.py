"""Notebook conventions that strict nbval alone would not enforce (DESIGN §5)."""

from __future__ import annotations

import math
import re
import urllib.parse
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbval.plugin import get_sanitize_patterns

import redisopt
from tests.helpers import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SANITIZE = ROOT / "notebooks" / "nbval-sanitize.cfg"
IGNORE = "nbval-ignore-output"
SLIDE_TYPES = {"slide", "subslide", "fragment", "skip", "notes", "-"}


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _code(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def _checked(cell: nbformat.NotebookNode) -> bool:
    return IGNORE not in cell.metadata.get("tags", [])


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "no chapter notebooks found"


def test_sanitize_file_pairs_all_parse() -> None:
    text = SANITIZE.read_text(encoding="utf-8")
    assert "\r" not in text, "sanitize file must use LF line endings"
    pairs = get_sanitize_patterns(text)
    regex_lines = [line for line in text.splitlines() if line.startswith("regex: ")]
    assert len(pairs) == len(regex_lines) >= 4, "a regex line without its replace line is dropped silently"
    for regex, _ in pairs:
        re.compile(regex)
    sanitized = "127.0.0.1:40123 /tmp/redisopt-ab_12 0x7f00aa55bb00 12.5 ms"
    for regex, replace in pairs:
        sanitized = re.sub(regex, replace, sanitized)
    assert sanitized == "127.0.0.1:PORT /tmp/redisopt-DIR 0xADDRESS DURATION"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_from_one_clean_run(path: Path) -> None:
    cells = _code(_read(path))
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), "re-run top to bottom (make notebooks)"
    for cell in cells:
        for out in cell.outputs:
            assert out.output_type != "error", cell.source[:60]
            assert out.get("name") != "stderr", f"stderr in: {cell.source[:60]}"
            assert "image/svg+xml" not in out.get("data", {}), "use PNG plots"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_structure_follows_the_conventions(path: Path) -> None:
    nb = _read(path)
    cells = _code(nb)
    first = cells[0].source
    assert "import redisopt" in first and "connect()" in first, "first code cell: imports and connect()"
    for cell in nb.cells:
        assert cell.metadata.get("slideshow", {}).get("slide_type") in SLIDE_TYPES, cell.source[:60]
    for cell in cells:
        assert len(cell.source.splitlines()) <= 16, f"cell too fat: {cell.source[:60]}"
        if "ro.compare(" in cell.source or "ro.sweep(" in cell.source or "ro.plots." in cell.source:
            assert not _checked(cell), f"a measurement cell must be tagged {IGNORE}: {cell.source[:60]}"
    solutions = [c for c in cells if "### BEGIN SOLUTION" in c.source]
    assert len(solutions) >= 2, "at least two exercises"
    for cell in solutions:
        following = cells[cells.index(cell) + 1]
        assert "자가 점검" in following.source and _checked(following), "a checked self-check follows each exercise"


def _checked_outputs(cells: list[nbformat.NotebookNode], patterns: list[tuple[str, str]]) -> list[str]:
    texts = []
    for cell in cells:
        if not _checked(cell):
            continue
        parts = []
        for out in cell.outputs:
            parts.append(out.get("text", "") + "".join(str(v) for k, v in sorted(out.get("data", {}).items())
                                                       if k == "text/plain"))
        text = "".join(parts)  # stream chunks split by timing; nbval coalesces them too
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        texts.append(text)
    return texts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_twice_in_one_kernel_with_the_same_checked_outputs(path: Path) -> None:
    nb = _read(path)
    patterns = get_sanitize_patterns(SANITIZE.read_text(encoding="utf-8"))
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    runs = []
    with client.setup_kernel():
        for _ in range(2):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    cell.outputs = []
                    client.execute_cell(cell, index)
            runs.append(_checked_outputs(_code(nb), patterns))
    assert runs[0] == runs[1]
    committed = _checked_outputs(_code(_read(path)), patterns)
    assert runs[1] == committed, "checked outputs differ from the committed ones"


SCREEN_LINES = 30  # what one RISE subslide shows at the default scale, in text lines


def _shown_lines(cell: nbformat.NotebookNode) -> int:
    """A rough height of a cell on a slide: wrapped prose, code, text outputs, tables, figures."""
    width = 100 if cell.cell_type == "markdown" else 10_000
    lines = sum(max(1, math.ceil(len(line) / width)) for line in cell.source.splitlines())
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        if "text" in out:
            lines += len(out["text"].splitlines())
        elif "image/png" in data:
            size = re.search(r"(\d+)x(\d+)", data.get("text/plain", ""))
            lines += int(size.group(2)) // 22 if size else 15
        elif "text/html" in data:
            lines += data["text/html"].count("<tr") + 1
        else:
            lines += len(data.get("text/plain", "").splitlines())
    return lines


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_slides_fit_a_screen_and_hide_solutions(path: Path) -> None:
    groups: list[list[nbformat.NotebookNode]] = []
    for cell in _read(path).cells:
        kind = cell.metadata["slideshow"]["slide_type"]
        if "### BEGIN SOLUTION" in cell.source:
            assert kind in ("skip", "notes"), f"a solution must not be its own slide: {cell.source[:60]}"
        if kind in ("skip", "notes"):
            continue
        if kind in ("slide", "subslide") or not groups:
            groups.append([])
        groups[-1].append(cell)
    for group in groups:
        height = sum(_shown_lines(c) for c in group)
        assert height <= SCREEN_LINES, f"~{height} lines on one slide, from: {group[0].source[:60]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_tables_are_html_and_keys_live_under_the_workbook_namespace(path: Path) -> None:
    sources = "\n".join(c.source for c in _code(_read(path)))
    assert ".to_string(" not in sources, "show a DataFrame as the cell's value (HTML), not print(df.to_string())"
    assert "KeySpace(" not in sources and "KeySpace.chapter(" in sources, "use KeySpace.chapter(N) (redisopt:chNN)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_passes_on_a_user_server_with_foreign_keys_and_other_thresholds(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A learner's own server (REDIS_URL): its keys survive, its settings are not ours, outputs hold."""
    server = redisopt.start_server({"hash-max-listpack-entries": 64, "set-max-listpack-entries": 200})
    try:
        user = server.client()
        number = int(path.name[:2])
        foreign = {f"ch{number:02d}:customer:1": "kim", "redisopt:other": "keep",
                   f"redisopt:ch{number:02d}x:1": "near miss"}
        user.mset(foreign)
        user.set(f"redisopt:ch{number:02d}:left:over", "from an interrupted run")
        password = urllib.parse.quote(server.password or "", safe="")
        monkeypatch.setenv("REDIS_URL", f"redis://:{password}@{server.host}:{server.port}/0")
        monkeypatch.delenv("REDISOPT_BACKEND", raising=False)
        monkeypatch.delenv("REDISOPT_PRIVATE_URL", raising=False)  # a parent's private server
        monkeypatch.setenv("REDISOPT_PROGRESS", "0")
        nb = _read(path)
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        patterns = get_sanitize_patterns(SANITIZE.read_text(encoding="utf-8"))
        assert _checked_outputs(_code(nb), patterns) == _checked_outputs(_code(_read(path)), patterns)
        assert {k: user.get(k) for k in foreign} == foreign
        assert user.config_get("hash-max-listpack-entries") == {"hash-max-listpack-entries": "64"}
        user.close()
    finally:
        server.stop()

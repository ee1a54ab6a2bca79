"""Every notebooks/*.ipynb is the Jupytext pair of its notebooks/*.py (the .py is the source of truth:
regenerate with `jupytext --to ipynb notebooks/<name>.py`) and is committed without outputs."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
IPYNB = sorted(NOTEBOOKS.glob("*.ipynb"))


def cells(notebook) -> list[tuple[str, str, tuple]]:
    """What must agree between the pair: cell type, source (trailing blank space ignored) and tags."""
    return [(cell.cell_type, cell.source.rstrip(), tuple(cell.metadata.get("tags", []))) for cell in notebook.cells]


def test_there_are_notebooks():
    assert IPYNB, f"no notebooks in {NOTEBOOKS}"


@pytest.mark.parametrize("ipynb", IPYNB, ids=lambda p: p.name)
def test_ipynb_matches_its_jupytext_pair(ipynb):
    script = ipynb.with_suffix(".py")
    assert script.exists(), f"{ipynb.name} has no Jupytext pair {script.name}"
    from_script = jupytext.read(script)
    from_ipynb = jupytext.read(ipynb)
    expected, actual = cells(from_script), cells(from_ipynb)
    for index, (want, got) in enumerate(zip(expected, actual)):
        assert want == got, (f"{ipynb.name} cell {index} differs from {script.name}; regenerate with "
                             f"`jupytext --to ipynb notebooks/{script.name}`\n.py:    {want!r}\n.ipynb: {got!r}")
    assert len(expected) == len(actual), (
        f"{script.name} has {len(expected)} cells, {ipynb.name} {len(actual)}; regenerate with "
        f"`jupytext --to ipynb notebooks/{script.name}`")
    kernel = from_ipynb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{ipynb.name} kernelspec is {kernel!r}, papermill runs it with -k python3"


@pytest.mark.parametrize("ipynb", IPYNB, ids=lambda p: p.name)
def test_ipynb_is_committed_without_outputs(ipynb):
    notebook = nbformat.read(ipynb, as_version=4)
    with_outputs = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and c.get("outputs")]
    with_counts = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and c.get("execution_count")]
    assert not with_outputs, f"{ipynb.name}: code cells {with_outputs} have outputs; clear them before committing"
    assert not with_counts, f"{ipynb.name}: code cells {with_counts} have execution counts"
    assert "widgets" not in notebook.metadata, f"{ipynb.name} carries saved widget state"


@pytest.mark.parametrize("script", sorted(NOTEBOOKS.glob("*.py")), ids=lambda p: p.name)
def test_paired_script_has_its_ipynb(script):
    text = script.read_text(encoding="utf-8")
    if "formats: ipynb,py" not in text:
        pytest.skip(f"{script.name} does not declare a Jupytext ipynb pair")
    assert script.with_suffix(".ipynb").exists(), (
        f"{script.name} declares an ipynb pair that is missing: `jupytext --to ipynb notebooks/{script.name}`")

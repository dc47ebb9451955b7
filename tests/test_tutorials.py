"""The tutorials: every ``tutorials/NN_*.py`` runs top to bottom in smoke mode as a notebook,
and every committed ``.ipynb`` holds the cells of its source and the outputs of a full run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
_spec = importlib.util.spec_from_file_location("tutorials_build", TUTORIALS / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

SOURCES = build.tutorial_sources()
MAX_NOTEBOOK_BYTES = 2_000_000
CELL_TIMEOUT_S = 180


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def test_tutorials_are_found_and_paired():
    assert len(SOURCES) >= 4
    notebooks = {p.stem for p in TUTORIALS.glob("[0-9][0-9]_*.ipynb")}
    assert notebooks == {p.stem for p in SOURCES}


def test_percent_format_parsing(tmp_path):
    script = tmp_path / "00_demo.py"
    script.write_text(
        "# header comment, not a cell\n"
        "# %% [markdown]\n# # Title\n#\n# text $x^2$\n\n"
        "# %%\nimport os\n\nprint(1)\n\n"
        "# %%\n\n"
    )
    nb = build.to_notebook(script)
    assert _cells(nb) == [("markdown", "# Title\n\ntext $x^2$"), ("code", "import os\n\nprint(1)")]
    assert nb.metadata["kernelspec"]["name"] == "python3"
    script.write_text("# %% [markdown]\nnot a comment\n")
    with pytest.raises(ValueError, match="must start with '#'"):
        build.read_cells(script)
    script.write_text("# %% [raw]\nx\n")
    with pytest.raises(ValueError, match="unknown cell marker"):
        build.read_cells(script)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_tutorial_runs_in_smoke_mode(source, tmp_path):
    first_code = next(c for c in build.to_notebook(source).cells if c.cell_type == "code")
    assert build.SMOKE_ENV in first_code.source, "the first code cell must read PYRO_VAE_SMOKE"
    path = tmp_path / f"{source.stem}.ipynb"
    nbformat.write(build.to_notebook(source), path)  # what users open
    nb = nbformat.read(path, as_version=4)
    build.execute(nb, smoke=True, timeout=CELL_TIMEOUT_S)  # raises on a cell error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert "smoke mode" in "".join(o.get("text", "") for o in outputs)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_matches_source_and_has_full_outputs(source):
    path = source.with_suffix(".ipynb")
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is over 2 MB"
    committed = nbformat.read(path, as_version=4)
    assert _cells(committed) == _cells(build.to_notebook(source)), (
        f"{path.name} is out of date: run `python tutorials/build.py {source.stem}`"
    )
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(isinstance(c.execution_count, int) for c in code), "not every cell was run"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the outputs"
    last_text = "".join(o.get("text", "") for o in code[-1].outputs)
    assert "(full mode)" in last_text, "the committed outputs must come from a full run"


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_every_claim_in_the_prose_is_checked_by_the_committed_run(source):
    """Each tutorial checks what its prose states with ``claim(ok, text)`` (defined in its
    first code cell: an assertion in full mode, a report in smoke mode). The committed
    full-mode outputs must show every claim cell passing and none failing; a notebook also
    states learning goals and offers one exercise."""
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert "def claim(" in code[0].source, "the first code cell must define claim(ok, text)"
    claim_cells = [c for c in code[1:] if "claim(" in c.source]
    calls = sum(c.source.count("claim(") for c in claim_cells)
    assert calls >= 4, f"{source.stem} checks only {calls} claims"
    for cell in claim_cells:
        lines = _text(cell).splitlines()
        assert any(line.startswith("✓ ") for line in lines), f"no passing claim in:\n{cell.source}"
        failed = [line for line in lines if line.startswith("✗ ")]
        assert not failed, f"{source.stem}: failed claims {failed}"
    markdown = "\n".join(c.source for c in committed.cells if c.cell_type == "markdown")
    assert "Learning goals" in markdown, "state the learning goals at the top"
    assert "Try this:" in markdown, "offer one exercise ('Try this:')"

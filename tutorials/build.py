r"""Build the tutorials: percent script (``NN_name.py``) -> executed notebook (``NN_name.ipynb``).

The ``.py`` files are the editable source, in the jupytext "percent" format: a line
``# %%`` starts a code cell and ``# %% [markdown]`` a markdown cell whose lines are
comments (``# `` stripped). No jupytext is needed: the conversion is a few lines of
:mod:`nbformat`, and execution is :mod:`nbclient` on an IPython kernel that runs
``sys.executable``, the interpreter running this script (so a virtual environment needs
no installed kernelspec).

Usage::

    python tutorials/build.py                 # every tutorial, full mode: writes the .ipynb
    python tutorials/build.py 02_elbo_and_its_gap
    python tutorials/build.py --smoke         # PYRO_VAE_SMOKE=1: quick run, writes nothing

Each notebook's wall time (kernel start included) is printed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent
SMOKE_ENV = "PYRO_VAE_SMOKE"
KERNEL_NAME = "python3"
_CELL = re.compile(r"^# %%(?P<rest>.*)$")


def tutorial_sources(names: list[str] | None = None) -> list[Path]:
    """The tutorial scripts ``tutorials/NN_*.py``, in order: all, or those named (a full
    name, with or without ``.py``, or a unique prefix such as ``02``)."""
    found = sorted(p for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    if not names:
        return found
    by_name = {p.stem: p for p in found}
    out = []
    for name in names:
        stem = Path(name).stem
        matches = [s for s in by_name if s == stem] or [s for s in by_name if s.startswith(stem)]
        if len(matches) != 1:
            raise SystemExit(f"No single tutorial {name!r}; choose from {sorted(by_name)}.")
        out.append(by_name[matches[0]])
    return out


def read_cells(path: Path) -> list[tuple[str, str]]:
    """Parse a percent script into ``(cell_type, source)`` pairs.

    Lines before the first ``# %%`` marker are ignored (a module docstring or header).
    A markdown cell's lines must be comments: ``# text`` becomes ``text`` and ``#``
    becomes an empty line. Leading and trailing blank lines of each cell are dropped.
    """
    cells: list[tuple[str, list[str]]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = _CELL.match(line)
        if match:
            rest = match["rest"].strip()
            if rest not in ("", "[markdown]"):
                raise ValueError(f"{path}:{number}: unknown cell marker {line!r}.")
            cells.append(("markdown" if rest == "[markdown]" else "code", []))
            continue
        if not cells:
            continue
        kind, lines = cells[-1]
        if kind == "markdown":
            if line and not line.startswith("#"):
                raise ValueError(f"{path}:{number}: a markdown cell line must start with '#'.")
            line = line[2:] if line.startswith("# ") else line[1:]
        lines.append(line)
    out = []
    for kind, lines in cells:
        source = "\n".join(lines).strip("\n")
        if source:
            out.append((kind, source))
    return out


def to_notebook(path: Path) -> nbformat.NotebookNode:
    """The unexecuted notebook of a percent script."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["source"] = f"generated from {path.name} by build.py; edit the .py file"
    for kind, source in read_cells(path):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(source))
    return nb


class _ThisPythonSpecs(KernelSpecManager):
    """A kernelspec manager whose ``python3`` kernel is ``sys.executable -m ipykernel``,
    whatever kernelspecs are installed."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="Python 3 (ipykernel)",
            language="python",
            resource_dir=str(TUTORIALS),
        )


def execute(
    nb: nbformat.NotebookNode, *, smoke: bool, timeout: int = 900, cwd: Path = TUTORIALS
) -> nbformat.NotebookNode:
    """Execute ``nb`` in place top to bottom in a fresh kernel (``PYRO_VAE_SMOKE=1`` in
    its environment when ``smoke``); a cell that raises raises
    :class:`nbclient.exceptions.CellExecutionError`. ``timeout`` is per cell, in seconds."""
    env = dict(os.environ)
    env.pop(SMOKE_ENV, None)
    if smoke:
        env[SMOKE_ENV] = "1"
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=_ThisPythonSpecs())
    client = NotebookClient(
        nb,
        km=km,
        timeout=timeout,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)
    return nb


def strip_volatile(nb: nbformat.NotebookNode) -> None:
    """Drop per-run metadata (execution timestamps) so rebuilds diff cleanly."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)


def build(path: Path, *, smoke: bool, output_dir: Path | None = None) -> float:
    """Convert and execute one tutorial and write the executed notebook: in full mode to
    ``NN_name.ipynb`` beside the script (or into ``output_dir``), in smoke mode only into
    ``output_dir`` if one is given. Returns the wall time in seconds."""
    nb = to_notebook(path)
    started = time.perf_counter()
    try:
        execute(nb, smoke=smoke)
    finally:  # with output_dir, keep the partial notebook of a failed run for inspection
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, output_dir / f"{path.stem}.ipynb")
    seconds = time.perf_counter() - started
    if output_dir is None and not smoke:
        strip_volatile(nb)
        nbformat.write(nb, path.with_suffix(".ipynb"))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="tutorials to build (default: all)")
    parser.add_argument(
        "--smoke", action="store_true", help=f"run with {SMOKE_ENV}=1 and write nothing"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="write the executed notebooks (with per-cell timings) here instead",
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    total = 0.0
    for path in tutorial_sources(args.names):
        seconds = build(path, smoke=args.smoke, output_dir=args.output_dir)
        total += seconds
        written = ""
        if args.output_dir is not None:
            written = f" -> {args.output_dir / (path.stem + '.ipynb')}"
        elif not args.smoke:
            written = f" -> {path.with_suffix('.ipynb').name}"
        cpus = os.cpu_count()
        print(f"{path.stem}: {seconds:.1f} s ({mode} mode, {cpus} CPUs){written}", flush=True)
    print(f"total: {total:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

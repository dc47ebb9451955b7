"""Pages generated at build time, so that the site never drifts from its sources.

Before Sphinx reads anything (``config-inited``), this extension writes:

- ``guide/``: one page per ``## `` section of ``README.md`` (the sections named in
  ``readme_special_sections`` excepted), ``guide/intro.inc`` (the README's text before its
  first section) and ``guide/toctree.inc`` (the pages in README order);
- ``benchmarks/``: ``index.md`` with the README's "Benchmarks" prose, and one page per
  ``### `` table between ``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->``;
- ``tutorials/``: copies of the committed notebooks ``tutorials/*.ipynb`` (rendered as they
  are, never executed) and ``index.md`` from ``tutorials/README.md``;
- ``api/``: one page per public subpackage or module of ``pyro_vae`` found on disk, with
  ``automodule`` for it and each of its modules (autodoc finds the members), so a module
  that is added, moved or removed needs no edit here.

These folders are build outputs (ignored by git); edit README.md, tutorials/ or the
docstrings instead. A file is rewritten only when its text changes, so rebuilds stay
incremental. The extension also resolves references to re-exported names
(``pyro_vae.fit``) to the place they are documented (``pyro_vae.train.loop.fit``).
"""

from __future__ import annotations

import importlib
import posixpath
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

logger = logging.getLogger(__name__)

GENERATED = ("guide", "benchmarks", "tutorials", "api")
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]*)\)")


def slug(title: str) -> str:
    """GitHub's (and MyST's) heading anchor: lower case, punctuation dropped, ``-`` for spaces."""
    text = title.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def split(lines: list[str], level: int) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Split markdown lines at headings of ``level`` outside code fences.

    :returns: the lines before the first such heading, and (title, body lines) per heading.
    """
    mark = "#" * level + " "
    head: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    fenced = False
    for line in lines:
        if FENCE.match(line):
            fenced = not fenced
        if not fenced and line.startswith(mark):
            sections.append((line[len(mark) :].strip(), []))
        elif sections:
            sections[-1][1].append(line)
        else:
            head.append(line)
    return head, sections


def promote(lines: list[str], by: int) -> list[str]:
    """Raise every heading outside code fences by ``by`` levels (``### x`` -> ``## x``)."""
    out = []
    fenced = False
    for line in lines:
        if FENCE.match(line):
            fenced = not fenced
        if not fenced and re.match(r"#{2,6} ", line):
            line = line[by:]
        out.append(line)
    return out


class Linker:
    """Rewrite README links for a page that lives at ``docs/<page>.md``.

    ``#anchor`` links point at the page that now holds that heading; repository files that
    are pages of the site (``tutorials/README.md``, the notebooks) point at those pages;
    links to other repository files keep only their text (the site does not hold them).
    """

    def __init__(self) -> None:
        self.anchors: dict[str, tuple[str, str]] = {}  # slug -> (page, anchor or "")
        self.files: dict[str, str] = {}  # repository path -> page

    def __call__(self, text: str, page: str, base: str = "") -> str:
        here = posixpath.dirname(page)

        def rel(target: str) -> str:
            return posixpath.relpath(target + ".md", here or ".")

        def sub(m: re.Match[str]) -> str:
            label, target = m.group(1), m.group(2)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                return m.group(0)
            if target.startswith("#"):
                where = self.anchors.get(target[1:])
                if where is None or where[0] == page:
                    return m.group(0)
                dest, anchor = where
                return f"[{label}]({rel(dest)}{'#' + anchor if anchor else ''})"
            path, _, anchor = target.partition("#")
            repo_path = posixpath.normpath(posixpath.join(base, path))
            if repo_path in self.files:
                dest = rel(self.files[repo_path])
                if repo_path.endswith(".ipynb"):
                    dest = dest[: -len(".md")]
                return f"[{label}]({dest}{'#' + anchor if anchor else ''})"
            return label

        return LINK.sub(sub, text)


def write(path: Path, text: str | bytes, written: set[Path]) -> None:
    """Write ``path`` unless it already holds exactly this content."""
    data = text.encode() if isinstance(text, str) else text
    written.add(path.resolve())
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def toctree(entries: list[str], *, caption: str = "", hidden: bool = False) -> str:
    opts = [":maxdepth: 1"]
    if caption:
        opts.append(f":caption: {caption}")
    if hidden:
        opts.append(":hidden:")
    return "```{toctree}\n" + "\n".join(opts) + "\n\n" + "\n".join(entries) + "\n```\n"


def readme_pages(src: Path, repo: Path, special: dict[str, str], written: set[Path]) -> None:
    """``guide/``, ``benchmarks/`` and ``tutorials/`` from README.md and tutorials/."""
    readme = (repo / "README.md").read_text(encoding="utf-8").splitlines()
    intro, sections = split(readme, 2)
    link = Linker()

    pages: list[tuple[str, str, list[str]]] = []  # (page, title, body lines)
    for title, body in sections:
        page = special.get(title, f"guide/{slug(title)}")
        pages.append((page, title, body))
        link.anchors[slug(title)] = (page, "")
        for sub_title, _ in split(body, 3)[1]:
            link.anchors.setdefault(slug(sub_title), (page, slug(sub_title)))

    notebooks = sorted((repo / "tutorials").glob("*.ipynb"))
    link.files["tutorials/README.md"] = "tutorials/index"
    for nb in notebooks:
        link.files[f"tutorials/{nb.name}"] = f"tutorials/{nb.stem}"

    # benchmarks: the prose, then one page per generated table
    bench = special.get("Benchmarks", "benchmarks/index")
    tables: list[tuple[str, str, list[str]]] = []
    for page, _title, body in pages:
        if page != bench:
            continue
        text = "\n".join(body)
        start, end = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
        if start not in text or end not in text:
            logger.warning("README.md: no %s ... %s markers in 'Benchmarks'", start, end)
            continue
        before, rest = text.split(start, 1)
        inside, after = rest.split(end, 1)
        head, found = split(inside.splitlines(), 3)
        for sub_title, sub_body in found:
            tables.append((f"benchmarks/{slug(sub_title)}", sub_title, sub_body))
            link.anchors[slug(sub_title)] = (f"benchmarks/{slug(sub_title)}", "")
        body[:] = [*before.splitlines(), *head, "{tables}", *after.splitlines()]

    guide = []
    for page, title, body in pages:
        if page == "tutorials/index":  # tutorials/README.md is that page; see below
            continue
        text = "\n".join(promote(body, 1)).strip("\n")
        if page == bench:
            entries = [posixpath.basename(p) for p, _, _ in tables]
            text = text.replace("{tables}", toctree(entries, caption="Tables"))
        write(src / f"{page}.md", f"# {title}\n\n{link(text, page)}\n", written)
        if page.startswith("guide/"):
            guide.append(page)
    for page, title, body in tables:
        text = "\n".join(promote(body, 2)).strip("\n")
        write(src / f"{page}.md", f"# {title}\n\n{link(text, page)}\n", written)

    lead = [line for line in intro if not line.startswith("# ")]
    write(src / "guide/intro.inc", link("\n".join(lead).strip("\n"), "index") + "\n", written)
    write(src / "guide/toctree.inc", toctree(guide, caption="User guide"), written)

    # tutorials: the committed notebooks as they are, and their README as the index
    for nb in notebooks:
        write(src / "tutorials" / nb.name, nb.read_bytes(), written)
    tutorials_readme = (repo / "tutorials/README.md").read_text(encoding="utf-8").strip("\n")
    text = link(tutorials_readme, "tutorials/index", base="tutorials")
    entries = [nb.stem for nb in notebooks]
    write(src / "tutorials/index.md", text + "\n\n" + toctree(entries, hidden=True), written)


def modules_under(path: Path, name: str) -> list[str]:
    """``name`` and its public modules, depth first, read from the disk (nothing imported)."""
    found = [name]
    if not (path / "__init__.py").exists():
        return found
    for child in sorted(path.iterdir()):
        if child.name.startswith("_"):
            continue
        if child.is_dir() and (child / "__init__.py").exists():
            found += modules_under(child, f"{name}.{child.name}")
        elif child.suffix == ".py":
            found.append(f"{name}.{child.stem}")
    return found


def home(obj: Any, name: str, owner: str) -> str:
    """Where ``owner.name`` is documented: its defining module for classes and functions,
    the deepest ``pyro_vae`` module that holds it for other objects (constants)."""
    if isinstance(obj, ModuleType):
        return obj.__name__
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and module.startswith("pyro_vae"):
        return f"{module}.{qualname}"
    holders = [
        m
        for m, mod in list(sys.modules.items())
        if m.startswith(owner.split(".")[0]) and getattr(mod, name, None) is obj
    ]
    assigned = re.compile(rf"^{re.escape(name)}\s*(:[^=]*)?=", re.M)
    defining = [m for m in holders if assigned.search(source(m))]
    return f"{max(defining or holders, key=len, default=owner)}.{name}"


def source(module: str) -> str:
    path = getattr(sys.modules[module], "__file__", None)
    return Path(path).read_text(encoding="utf-8") if path and path.endswith(".py") else ""


def heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def automodule(name: str) -> str:
    """``automodule`` of one module: its own members (re-exports are documented at home)."""
    return f".. automodule:: {name}\n   :members:\n   :ignore-module-all:\n"


def exported(name: str) -> str:
    """A table of a package's ``__all__`` with links to where each name is documented."""
    module = importlib.import_module(name)
    names = getattr(module, "__all__", None)
    if not names:
        return ""
    rows = []
    for n in names:
        target = home(getattr(module, n), n, name)
        if target.startswith(name + "."):  # relative to the current module, as autosummary wants
            target = target[len(name) + 1 :]
        rows.append(f"   ~{target}")
    return (
        f".. rubric:: Exported by ``{name}``\n\n"
        ".. autosummary::\n   :nosignatures:\n\n" + "\n".join(rows) + "\n"
    )


def api_pages(src: Path, package: Path, config: Config, written: set[Path]) -> None:
    """``api/``: the package page and one page per public subpackage or module."""
    order: list[str] = list(config.api_order)
    areas = [
        child.stem
        for child in sorted(package.iterdir())
        if not child.name.startswith("_")
        and child.stem not in config.api_exclude
        and (child.suffix == ".py" or (child / "__init__.py").exists())
    ]
    areas.sort(key=lambda a: (order.index(a) if a in order else len(order), a))
    root = package.name
    index = [
        heading("API reference", "="),
        f".. automodule:: {root}\n   :no-members:\n",
        exported(root),
        "Every public module, with the members autodoc finds in it:\n",
        ".. toctree::\n   :maxdepth: 2\n\n" + "\n".join(f"   {root}.{a}" for a in areas) + "\n",
    ]
    write(src / "api/index.rst", "\n".join(index), written)
    for area in areas:
        names = modules_under(package / area, f"{root}.{area}")
        parts = [heading(f"``{names[0]}``", "="), automodule(names[0])]
        if (package / area / "__init__.py").exists():
            parts.append(exported(names[0]))
        for sub in names[1:]:
            parts += [heading(f"``{sub}``", "-"), automodule(sub)]
        write(src / f"api/{names[0]}.rst", "\n".join(parts), written)


def generate(app: Sphinx, config: Config) -> None:
    src = Path(app.srcdir)
    repo = src.parent
    written: set[Path] = set()
    readme_pages(src, repo, dict(config.readme_special_sections), written)
    api_pages(src, repo / config.api_package, config, written)
    for folder in GENERATED:  # drop pages whose source is gone
        for path in sorted((src / folder).rglob("*"), reverse=True):
            if path.is_file() and path.resolve() not in written:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                shutil.rmtree(path)


def resolve_reexport(
    app: Sphinx, env: Any, node: nodes.Element, contnode: nodes.Element
) -> nodes.Element | None:
    """Resolve ``pyro_vae.fit`` (a re-export) to ``pyro_vae.train.loop.fit`` (its home)."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("pyro_vae.") or "__" in target:
        return None
    parts = target.split(".")
    obj: Any = None
    for i in range(len(parts) - 1, 0, -1):  # longest importable module prefix
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        owner = ".".join(parts[:i])
        try:
            for attr in parts[i:]:
                owner, obj = f"{owner}.{attr}", getattr(obj, attr)
        except AttributeError:
            return None
        break
    if obj is None:
        return None
    canonical = home(obj, parts[-1], ".".join(parts[:-1]))
    if canonical == target:
        return None
    node = node.deepcopy()
    node["reftarget"] = canonical
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
    )


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("readme_special_sections", {}, "env")
    app.add_config_value("api_package", "pyro_vae", "env")
    app.add_config_value("api_order", [], "env")
    app.add_config_value("api_exclude", [], "env")
    app.connect("config-inited", generate)
    app.connect("missing-reference", resolve_reexport)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

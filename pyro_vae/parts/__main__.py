"""``python -m pyro_vae.parts``: print the table of registered parts (Markdown);
``python -m pyro_vae.parts --readme README.md`` rewrites the table between the
``<!-- registry:start -->`` and ``<!-- registry:end -->`` markers of that file."""

import argparse
from pathlib import Path

from pyro_vae.parts.registry import parts_table

parser = argparse.ArgumentParser(prog="python -m pyro_vae.parts", description=__doc__)
parser.add_argument("--readme", type=Path, default=None, help="rewrite the table in this file")
args = parser.parse_args()
table = parts_table()
if args.readme is None:
    print(table)
else:
    text = args.readme.read_text()
    start, end = "<!-- registry:start -->", "<!-- registry:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{args.readme} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    args.readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")
    print(f"wrote the parts table into {args.readme}")

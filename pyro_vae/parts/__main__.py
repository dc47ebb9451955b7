"""``python -m pyro_vae.parts``: print the table of registered parts (Markdown)."""

from pyro_vae.parts.registry import parts_table

print(parts_table())

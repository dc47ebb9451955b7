"""``python -m pyro_vae``: the same as the ``pyro-vae`` command."""

from pyro_vae.cli import main

raise SystemExit(main())

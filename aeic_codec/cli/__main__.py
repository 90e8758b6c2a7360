"""``python -m aeic_codec.cli``: the ``aeic`` command (torchrun starts training this way)."""

from .app import main

main(prog_name="aeic")

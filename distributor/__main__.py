"""``python -m distributor``: the same as the ``distributor`` command."""

from distributor.cli import main

main()

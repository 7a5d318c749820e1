"""`python -m pe_export.cli`: the same as the `pe-export` command."""

from pe_export.cli import main

main()

"""`python -m anomap` runs the CLI."""

from anomap.cli import main

main()

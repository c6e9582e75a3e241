"""`python -m tagfind` runs the command line."""

from .cli import main

main()

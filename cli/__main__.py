"""`python -m cli`: the `atlas` command."""

from cli import main

main()

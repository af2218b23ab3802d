"""`python -m atlas_cli`: the `atlas` command."""

from atlas_cli import main

main()

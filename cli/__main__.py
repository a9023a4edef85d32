"""`python -m peerkit`: the same as the `peerkit` command."""

from .cli import console_main

console_main()

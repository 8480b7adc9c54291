"""`python -m x402bench`: the same as the `x402bench` command."""

from x402bench.cli import main

main()

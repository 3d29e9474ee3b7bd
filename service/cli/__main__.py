"""`python -m service.cli`: the same as the `sealednotes` command."""

from service.cli import main

main()

"""`python -m tinyscale ...`: the same CLI as the `tinyscale` command."""

from tinyscale.cli import main

main()

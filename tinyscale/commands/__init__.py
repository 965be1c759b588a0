"""CLI command modules; each registers its commands on tinyscale.cli.app.

The modules import one another's options, and `tinyscale.cli` imports them all
in a fixed order once `app` exists. Importing the CLI first, whichever command
module a caller names, keeps that order: importing `commands.core` or
`commands.pipeline` first would otherwise reach a module that another one is
still half-way through defining (a circular import).
"""

import tinyscale.cli  # noqa: F401  (registers every command module, in order)

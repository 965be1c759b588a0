"""CLI command modules; each registers its commands on :data:`tinyscale.commands.app.app`.

`app` imports no command module, and the command modules import one another
(their shared options) only downwards, so any of them can be imported first.
:mod:`tinyscale.cli` imports them all, in a fixed order, before it runs the app.
"""

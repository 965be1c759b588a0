"""CLI command modules; each registers its commands on tinyscale.cli.app."""

"""Where the bundled targets/, templates/, firmware/ and costs/ live.

In a wheel they are copied inside the package (see pyproject.toml); in a
checkout or an editable install they sit at the repository's top level.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The bundled directory `name` ("targets", "templates", "firmware" or "costs")."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    # Return the in-package path so callers report a sensible location.
    return _PACKAGE / name

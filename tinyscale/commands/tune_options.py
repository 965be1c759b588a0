"""Options `tune` and `build --tune` share (a module of their own: pipeline and tune import it)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from tinyscale.search.tune_backends import BACKENDS

Backend = Enum("Backend", {name: name for name in BACKENDS}, type=str)  # type: ignore[misc]
GridOption = Annotated[
    Optional[str],
    typer.Option("--grid", help="Steps per side of the alpha*beta^2*gamma^2 = 2 lattice (N: (N+1)(N+2)/2 "
                                "candidates), or candidates 'a,b[,g];a,b[,g]' (gamma solved when left out). "
                                "The paper's 1.2,1.1,1.15 is always tried too. Default 2."),
]
JobsOption = Annotated[
    Optional[int], typer.Option("--jobs", "-j", min=1, help="Trials run at once (default: the number of cores).")
]
BackendOption = Annotated[
    Backend, typer.Option("--backend", help="local: a process pool; ray: Ray tasks (the `ray` extra).")
]
RayAddressOption = Annotated[
    Optional[str], typer.Option("--ray-address", help="Join this Ray cluster (host:port of `ray start --head`); "
                                                      "default: start Ray locally.")
]
DEFAULT_TUNE_EPOCHS = 3

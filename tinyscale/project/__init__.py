"""Project rendering: one context object per project, rendered from `templates/` into a flashable tree.

The Python package is named `project`, not `firmware`, because the wheel copies the
top-level `firmware/` (C sources copied into projects) to `tinyscale/firmware`.
"""

"""The search stage: the largest phi that fits a board (fit, patch_fit), the patch schedule for
any model (patching), and the coefficients fitted to a board and a dataset (tune and its grid,
backends and trials)."""

"""The boards: target files (targets), the chips and clock trees they name (chips, clocks), their
memory budgets and placement (budget), and the kernel libraries' scratch and persistent memory
(kernels). Data in, checked values out; no TensorFlow."""

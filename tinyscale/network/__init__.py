"""The network description: compound scaling, base architectures and their scaled specs, coefficients files.

`scaling` holds the paper's rules (phi to depth, width and resolution, the TPU
builder's rounding), `arch` the base networks as data and the hashable
:class:`~tinyscale.network.arch.NetworkSpec` a scaled one resolves to, and
`coefficients` the `coefficients.toml` that `tinyscale tune` writes. No TensorFlow.
"""

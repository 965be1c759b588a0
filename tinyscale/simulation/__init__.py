"""The TFLM side: the reference interpreter in crash-isolated worker processes, and host simulation.

`tflm` talks to `_tflm_worker` processes (numpy and tflite_micro only, started
as ``python -m tinyscale.simulation._tflm_worker``) to measure arenas and run
models; `simulate` turns that into memory, a per-operator table and accuracy.
"""

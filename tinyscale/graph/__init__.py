"""One int8 graph for every stage: read from a flatbuffer, transformed by passes, written back.

`model` holds the dataclasses, `flatbuffer` the reader and writer (schema
bindings of the tflite-micro wheel, no TensorFlow), `analysis` the questions
passes ask of a graph (producers, consumers, MACs), `patch` the patch-based
inference pass; `estimate` the analyses (flatbuffer size and TFLM's arena planner,
with 32-bit and 64-bit struct sizes from `tflm_abi`), `latency` the cycle cost per
operator, and `tflite_model` a summary view (I/O quantization, op table). The same Model is built from a NetworkSpec (without weight
bytes) by :func:`tinyscale.graph.estimate.tflite_graph`, and any Model is planned by
:func:`tinyscale.graph.estimate.arena_plan` (TFLM's allocator, to the byte).
"""

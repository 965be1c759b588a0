"""One int8 graph for every stage: read from a flatbuffer, transformed by passes, written back.

`model` holds the dataclasses, `flatbuffer` the reader and writer (schema
bindings of the tflite-micro wheel, no TensorFlow), `analysis` the questions
passes ask of a graph (producers, consumers, MACs), `patch` the patch-based
inference pass.
"""

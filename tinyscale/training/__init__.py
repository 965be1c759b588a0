"""The TensorFlow side: datasets (data, numpy only), the Keras network built from a spec
(keras_builder), training and its checkpoints (train, train_checkpoint), and the full-integer
conversion (convert). Each module imports TensorFlow lazily, inside the functions that need it."""

"""tinyscale: compound-scaled EfficientNets fitted to microcontrollers."""

__version__ = "0.1.0"

"""wool_local: an async-native process pool for one machine."""

__version__ = "0.1.0.dev0"

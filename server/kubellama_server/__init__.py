"""kubellama inference server: a llama.cpp-compatible HTTP server with continuous batching."""

__version__ = "0.1.0"

"""Thin, typed wrappers over llama-cpp-python's low-level (ctypes) API.

Only the scheduler thread calls into these objects once the server is running.
"""

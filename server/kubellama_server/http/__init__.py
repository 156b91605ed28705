"""HTTP layer: FastAPI app, error handling, request bodies, streaming helpers, routes."""

"""Serving logic per endpoint family: build tasks from requests, format engine results."""

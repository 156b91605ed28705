"""kubellama-router: spreads OpenAI, Anthropic and llama.cpp API requests over a LlamaServer's
replicas by cache affinity and load (strategies in `strategies`), streaming passed through."""

__version__ = "0.1.0"

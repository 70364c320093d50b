"""The models the router runs, with no Ray: the embedding model, the generation engines (vLLM,
transformers, an OpenAI-compatible endpoint) and tiny random-weight stand-ins for local runs."""

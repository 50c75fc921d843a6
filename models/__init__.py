"""Bundled models and the scripts that make them (digits CNN/MLP, MiniLM export, model cache)."""

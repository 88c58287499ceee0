"""Analyses of pose invariance: what the embeddings and hidden features say about pose."""

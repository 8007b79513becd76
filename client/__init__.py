"""Engram Store client: Engram hashing (and, as the project grows, the store client)."""

from client.hashing import CompressedTokenizer, NgramHashMapping

__all__ = ["CompressedTokenizer", "NgramHashMapping"]

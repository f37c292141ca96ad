"""Decoding, scoring and hallucination guards."""

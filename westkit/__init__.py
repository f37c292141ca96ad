"""westkit: DeepSpeed training toolkit for speech + LLM models.

Read from shard to loss: `westkit.data` (shards -> batches), `westkit.models` (plain modules),
`westkit.train` (the one DeepSpeed engine), `westkit.decode` (generation and scoring).
"""
__version__ = "0.1.0"

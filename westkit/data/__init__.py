"""The data layer: shards on disk -> batches on the device.

`shards` writes and indexes tar shards (`westkit-shards` is its CLI, `sources` reads the input
formats), `corpora` builds the offline corpora, `loader` plans and streams batches,
`pipeline` holds the per-sample steps and collation, `features` the on-device log-mel.
See docs/data.md.
"""

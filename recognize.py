#!/usr/bin/env python
"""Batch decoding and scoring: `python recognize.py --help` (same as `westkit-recognize`)."""
import sys

from westkit.decode.recognize import main

if __name__ == "__main__":
    sys.exit(main())

"""Merge a ZeRO checkpoint's trainable weights into one fp32 safetensors file, offline.

    python -m westkit.train.export exp/run1/checkpoints exp/run1/step300.safetensors [--tag step_00000300]

Needs no GPU and no process group (DeepSpeed's ``zero_to_fp32`` reader); works for any number
of ranks the checkpoint was written with.
"""
from __future__ import annotations

import argparse
import sys

from westkit.train.checkpoint import consolidate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", help="a run's checkpoints folder (out_dir/checkpoints)")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--tag", default=None, help="a step_* folder; default: the 'latest' pointer")
    args = p.parse_args(argv)
    try:
        path = consolidate(args.checkpoints, args.output, args.tag)
    except ValueError as e:
        p.error(str(e))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

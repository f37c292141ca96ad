"""Local random access vs streamed shards, side by side, and the per-sample decode + resample cost.

One evaluation pass (every utterance once, no features) over the same shards read four ways:
by offset from local files (``mode: offset``, one ``pread`` per member), and streamed front to
back (``mode: stream``) from local files, from a real HTTP server on 127.0.0.1
(``python -m http.server``; loopback, so no real network latency or bandwidth limit) and through
``pipe:cat``. Then, in one process, what a sample costs: reading its bytes, decoding the FLAC,
and resampling 48 kHz audio of the same length to 16 kHz (what a corpus not stored at 16 kHz
adds; westkit-shards stores 16 kHz, so its shards skip it). The corpus is re-sharded first into
``--shard-mb`` shards so that every worker has shards to stream (not timed).

    python benchmarks/streaming.py        # general-train + special-tts + asterisk-test, 1 and 2 workers
    python benchmarks/streaming.py --corpus asterisk-test --workers 1 2 4
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path



@dataclass(frozen=True)
class _Flac:
    data: bytes

    def load(self):
        from westkit.data.audio import decode_flac

        return decode_flac(self.data)[0]


def reshard(folders: list[Path], out: Path, shard_mb: float) -> Path:
    """The corpora rewritten into shards of about ``shard_mb`` MB (same samples, same order)."""
    import tarfile

    from westkit.data.shards import Entry, read_index, write_shards
    import json

    entries = []
    for folder, s in ((f, s) for f in folders for s in read_index(f)["shards"]):
        with tarfile.open(folder / s["name"]) as tar:
            members = {m.name: m for m in tar}
            for row in s["samples"]:
                key = row[0]
                meta = json.loads(tar.extractfile(members[f"{key}.json"]).read())
                flac = members.get(f"{key}.flac")
                entries.append(Entry(key=key, text=meta["text"], lang=meta.get("lang", "en"),
                                     audio=_Flac(tar.extractfile(flac).read()) if flac else None))
    write_shards(entries, out, shard_bytes=int(shard_mb * 2**20), workers=1, progress=False)
    return out


def serve(folder: Path):
    """``python -m http.server`` on 127.0.0.1 (port from the OS); returns (process, base URL)."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    port = int(re.search(r"port (\d+)", line).group(1))
    return proc, f"http://127.0.0.1:{port}"


def one_pass(where: str, mode: str, workers: int, train: bool = False) -> tuple[int, float, float]:
    """(utterances, audio seconds, wall seconds) of one pass (an epoch when ``train``)."""
    from westkit.data.loader import LoaderConfig, build_loader

    cfg = LoaderConfig(shards=[where], mode=mode, num_workers=workers, shuffle=train, min_duration=0.0,
                       max_duration=1e9, max_batch_seconds=200.0, max_batch_size=32, seed=0)
    start = time.perf_counter()
    loader = build_loader(cfg, train=train)
    n, seconds = 0, 0.0
    if train:
        it = iter(loader)
        batches = (next(it) for _ in range(len(loader)))
    else:
        batches = iter(loader)
    for batch in batches:
        n += len(batch["keys"])
        seconds += float(batch["audio_lens"].sum()) / 16000
    return n, seconds, time.perf_counter() - start


def sample_costs(folder: Path) -> dict[str, float]:
    """Seconds per audio second of reading, decoding and 48 -> 16 kHz resampling, one process."""
    import soxr

    from westkit.data.audio import conform, decode_flac
    from westkit.data.shards import read_index

    t_read = t_decode = t_resample = audio_s = 0.0
    for s in read_index(folder)["shards"]:
        fd = os.open(folder / s["name"], os.O_RDONLY)
        for row in s["samples"]:
            if row[5] < 0:
                continue
            t0 = time.perf_counter()
            data = os.pread(fd, row[6], row[5])
            t1 = time.perf_counter()
            audio, sr = decode_flac(data)
            t2 = time.perf_counter()
            at48 = soxr.resample(audio, sr, 48000)  # what a 48 kHz source would hold (untimed)
            t3 = time.perf_counter()
            conform(at48, 48000)
            t4 = time.perf_counter()
            t_read, t_decode, t_resample = t_read + t1 - t0, t_decode + t2 - t1, t_resample + t4 - t3
            audio_s += len(audio) / sr
        os.close(fd)
    return {"read bytes (pread)": t_read / audio_s, "decode FLAC": t_decode / audio_s,
            "resample 48 -> 16 kHz (soxr HQ)": t_resample / audio_s, "_audio": audio_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", nargs="+", default=["general-train", "special-tts", "asterisk-test"],
                   help="westkit.data.corpora names (built if needed), read as one set")
    p.add_argument("--shards", nargs="+", default=None, help="shard folders instead of --corpus")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--shard-mb", type=float, default=4.0)
    args = p.parse_args()
    from westkit.data import corpora

    source = [Path(s) for s in args.shards] if args.shards else [corpora.make(c) for c in args.corpus]
    with tempfile.TemporaryDirectory() as tmp:
        folder = reshard(source, Path(tmp) / "shards", args.shard_mb)
        n_shards = len(list(folder.glob("*.tar")))
        server, url = serve(folder)
        try:
            ways = [("local files, by offset (pread)", str(folder), "offset"),
                    ("local files, streamed", str(folder), "stream"),
                    ("HTTP on 127.0.0.1, streamed", url, "stream"),
                    ("pipe:cat, streamed", f"pipe:cat {folder}/{{}}", "stream")]
            rows = []
            for workers in args.workers:
                for name, where, mode in ways:
                    n, seconds, wall = one_pass(where, mode, workers)
                    rows.append((f"{name}, eval pass", workers, n, seconds, wall))
                for name, where, mode in (ways[0], ways[2]):
                    n, seconds, wall = one_pass(where, mode, workers, train=True)
                    rows.append((f"{name}, training epoch (shuffled)", workers, n, seconds, wall))
        finally:
            server.kill()
        costs = sample_costs(folder)
    audio = costs.pop("_audio")
    print(f"\n{rows[0][2]} utterances ({audio:.0f} s of audio) from {', '.join(map(str, source))}, re-sharded into {n_shards} "
          f"shards of <= {args.shard_mb:g} MB; CPUs {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| reading | workers | utterances | wall s | utterances/s | audio s/s | utterances/s per worker | audio s/s per worker |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, workers, n, seconds, wall in rows:
        print(f"| {name} | {workers} | {n} | {wall:.2f} | {n / wall:.1f} | {seconds / wall:.0f} | "
              f"{n / wall / workers:.1f} | {seconds / wall / workers:.0f} |")
    print("\nper-sample cost in one process (ms per second of audio; audio s/s one core sustains):\n")
    print("| step | ms per audio s | audio s/s |")
    print("| --- | --- | --- |")
    for name, per in costs.items():
        print(f"| {name} | {1000 * per:.3f} | {1 / per:.0f} |")


if __name__ == "__main__":
    main()

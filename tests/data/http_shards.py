"""A real HTTP server for the streaming tests: serves one folder on 127.0.0.1 and stops by itself.

    python tests/data/http_shards.py FOLDER --lifetime 300 [--flaky] [--log requests.log]

Prints ``PORT <n>`` once listening (port chosen by the OS). ``Range: bytes=N-`` requests get a
206 with the bytes from N on. ``--flaky`` cuts the first response for each ``.tar`` after half
its bytes (the connection drops mid-shard, as a loaded object store does), so a reader must
retry. Every GET is appended to ``--log`` as ``PATH STATUS START``.
The process exits after ``--lifetime`` seconds whatever happens, so a failed test cannot leave
it running.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import sys
import threading
from pathlib import Path


class Handler(http.server.SimpleHTTPRequestHandler):
    flaky = False
    log_path: Path | None = None
    cut: set[str] = set()
    lock = threading.Lock()

    def log_message(self, fmt, *args):  # quiet; requests go to --log
        pass

    def _record(self, status: int, start: int = 0) -> None:
        if self.log_path:
            with self.lock, open(self.log_path, "a") as f:
                f.write(f"{self.path} {status} {start}\n")

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self._record(404)
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if wanted and int(wanted.group(1)) < len(data):
            start = int(wanted.group(1))
        with self.lock:
            cut = self.flaky and path.suffix == ".tar" and self.path not in self.cut
            if cut:
                self.cut.add(self.path)
        self._record(206 if start else 200, start)
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        data = data[start:]
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if cut:
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(data)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--lifetime", type=float, default=300.0)
    p.add_argument("--flaky", action="store_true")
    p.add_argument("--log", default=None)
    args = p.parse_args()
    Handler.flaky = args.flaky
    Handler.log_path = Path(args.log) if args.log else None
    handler = functools.partial(Handler, directory=args.folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    timer = threading.Timer(args.lifetime, lambda: os._exit(0))
    timer.daemon = True
    timer.start()
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())

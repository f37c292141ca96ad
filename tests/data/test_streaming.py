"""Streaming mode: shards served by a real HTTP server on 127.0.0.1 (tests/data/http_shards.py),
read front to back by 2 ranks x 2 workers, with uneven shards, resume, retries and bad shards."""
import json
import shutil

import numpy as np
import pytest

from westkit.data.loader import LoaderConfig, build_loader
from westkit.data.pipeline import tokenize
from westkit.data.shards import read_index

from data_helpers import HttpShards, tone_shards

DURS = [0.4 + (i * 37 % 23) * 0.1 for i in range(57)]
KEYS = {f"u{i:04d}" for i in range(len(DURS))}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tone_shards(tmp_path_factory.mktemp("stream") / "shards", DURS, shard_bytes=40_000)
    counts = [s["count"] for s in read_index(folder)["shards"]]
    assert len(counts) >= 4 and len(set(counts)) > 1, counts
    return folder


@pytest.fixture(scope="module")
def server(shards):
    with HttpShards(shards, lifetime=240) as s:
        yield s


def _cfg(where, **kw):
    base = dict(shards=[where], max_batch_seconds=6.0, max_batch_size=4, min_duration=0.0,
                buckets=[1.0, 2.0, 3.0], shuffle_buffer=8, num_workers=2, seed=3,
                retry_backoff=0.05)
    return LoaderConfig(**{**base, **kw})


def _take(loader, n):
    out, it = [], iter(loader)
    for _ in range(n):
        epoch = loader.state_dict()["epoch"]  # the epoch of the batch about to be handed out
        out.append((next(it)["keys"], epoch))
    return out


def test_two_ranks_two_workers_over_http_get_equal_batches_and_read_each_shard_once(server, shards):
    cfg = _cfg(server.url)
    loaders = [build_loader(cfg, rank=r, world_size=2) for r in range(2)]
    assert all(ld.streaming for ld in loaders)
    n0 = len(loaders[0])
    assert n0 == len(loaders[1]) > 3
    before = len(server.requests())
    runs = [_take(ld, 2 * n0 + 3) for ld in loaders]  # past two epoch boundaries
    # both ranks change epoch at the same step, so no rank waits for another
    assert [e for _, e in runs[0]] == [e for _, e in runs[1]]
    assert sorted(set(e for _, e in runs[0])) == [0, 1, 2]
    for epoch in (0, 1):  # disjoint within an epoch, most samples seen (the tail is cut)
        seen = [k for r in runs for keys, e in r if e == epoch for k in keys]
        assert len(seen) == len(set(seen)) and len(seen) > 0.7 * len(DURS)
    # the index was fetched once per loader (at build), each tar once per epoch and worker
    gets = server.requests()[before:]
    tars = [p for p, _ in gets if p.endswith(".tar")]
    assert not [p for p, _ in gets if p.endswith("index.json")]
    n_tars = len(read_index(shards)["shards"])
    per_tar = {p: tars.count(p) for p in set(tars)}
    assert len(per_tar) == n_tars and max(per_tar.values()) <= 3 and len(tars) <= 3 * n_tars


def test_http_local_and_pipe_streams_give_the_same_batches_through_recipe_steps(server, shards):
    steps = [tokenize("targets", lambda text: [len(text)])]
    got = {}
    for name, where in [("http", server.url), ("local", str(shards)), ("pipe", f"pipe:cat {shards}/{{}}")]:
        loader = build_loader(_cfg(where, mode="stream"), rank=1, world_size=2, steps=steps)
        batches = [next(it) for it in [iter(loader)] for _ in range(len(loader) + 2)]
        assert all(b["targets"].tolist() == [[len(t)] for t in b["texts"]] for b in batches)
        got[name] = [b["keys"] for b in batches]
    assert got["http"] == got["local"] == got["pipe"]
    # the offset reader of the same folder plans other batches, the same samples
    offset = build_loader(_cfg(str(shards), shuffle=False), train=False)
    stream = build_loader(_cfg(server.url, shuffle=False), train=False)
    assert sorted(k for b in offset for k in b["keys"]) == sorted(k for b in stream for k in b["keys"])


def test_resume_over_http_yields_the_batches_of_the_uninterrupted_run(server):
    cfg = _cfg(server.url)
    full = build_loader(cfg, rank=1, world_size=2)
    n = len(full) + 4  # the stop and the resume straddle an epoch boundary
    expected = [k for k, _ in _take(full, n)]
    first = build_loader(cfg, rank=1, world_size=2)
    got = [k for k, _ in _take(first, n - 6)]
    state = json.loads(json.dumps(first.state_dict()))
    assert state["mode"] == "stream" and state["num_workers"] == 2
    resumed = build_loader(cfg, rank=1, world_size=2)
    resumed.load_state_dict(state)
    got += [k for k, _ in _take(resumed, 6)]
    assert got == expected
    assert [k for k, _ in _take(build_loader(_cfg(server.url, seed=4), 1, 2), n)] != expected


def test_resume_mid_shard_asks_only_for_the_bytes_from_the_first_needed_member(tmp_path):
    folder = tone_shards(tmp_path / "big", DURS[:30], shard_bytes=200_000)
    sizes = [s["count"] for s in read_index(folder)["shards"]]
    assert len(sizes) >= 2 and max(sizes) >= 8, sizes
    with HttpShards(folder, lifetime=120) as server:
        cfg = _cfg(server.url, shuffle=False, num_workers=1)
        expected = [k for k, _ in _take(build_loader(cfg), 12)]
        ranges = []
        for stop in (2, 3, 5):
            first = build_loader(cfg)
            got = [k for k, _ in _take(first, stop)]
            resumed = build_loader(cfg)
            resumed.load_state_dict(first.state_dict())
            before = len(server.requests())
            got += [k for k, _ in _take(resumed, 12 - stop)]
            assert got == expected
            ranges += [start for _, status, start in server.requests(starts=True)[before:] if status == 206]
    # resumed in the middle of a shard, the worker fetched from a member header on, not byte 0
    assert ranges and all(start > 0 and start % 512 == 0 for start in ranges)


@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_over_http_sees_every_sample_once_with_equal_counts(server, world_size):
    cfg = _cfg(server.url, shuffle=False)
    per_rank = [[b["keys"] for b in build_loader(cfg, r, world_size, train=False)] for r in range(world_size)]
    assert len({len(p) for p in per_rank}) == 1
    assert sorted(k for p in per_rank for b in p for k in b) == sorted(KEYS)


def test_dropped_connections_are_retried(shards):
    with HttpShards(shards, lifetime=120, flaky=True) as flaky:
        loader = build_loader(_cfg(flaky.url, shuffle=False, max_read_errors=0), train=False)
        keys = [k for b in loader for k in b["keys"]]
        tars = [p for p, _ in flaky.requests() if p.endswith(".tar")]
        retried = flaky.requests()
    assert sorted(keys) == sorted(KEYS)  # nothing lost, nothing twice
    # each cut once, then read again (a cut in a tar's end padding loses nothing: read once);
    # a retry asks only for the bytes from the first member not yet delivered (HTTP Range)
    assert {tars.count(p) for p in set(tars)} <= {1, 2} and len(tars) > 1.5 * len(set(tars))
    assert any(status == 206 for p, status in retried)


def test_missing_and_truncated_shards_are_skipped_within_budget_then_fail(shards, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(shards, folder)
    index = read_index(folder)
    gone, cut = index["shards"][1], index["shards"][-1]
    (folder / gone["name"]).unlink()  # 404
    path = folder / cut["name"]
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    lost = {r[0] for r in gone["samples"]} | {r[0] for r in cut["samples"]
                                             if max(r[3] + r[4], r[5] + r[6]) > path.stat().st_size}
    with HttpShards(folder, lifetime=120) as server:
        cfg = _cfg(server.url, shuffle=False, retries=1, retry_backoff=0.01, num_workers=0)
        loader = build_loader(cfg, train=False)
        batches = list(loader)
        assert len(batches) == len(loader)  # the planned count, whatever was lost
        assert {k for b in batches for k in b["keys"]} == KEYS - lost
        statuses = server.requests()
        assert statuses.count((f"/{gone['name']}", 404)) == 1  # a 404 is not retried
        assert statuses.count((f"/{cut['name']}", 200)) == 2   # a truncated tar is, once
        with pytest.raises(RuntimeError, match="max_read_errors=3"):
            list(build_loader(_cfg(server.url, shuffle=False, retries=0, max_read_errors=3,
                                    num_workers=0), train=False))  # 4 lost in one worker


def test_streaming_config_mistakes_are_value_errors(server, shards):
    with pytest.raises(ValueError, match=r"needs \{\} where the file name goes"):
        build_loader(_cfg("pipe:aws s3 cp s3://bucket/train/index.json -"))
    with pytest.raises(ValueError, match="cannot be read by offset; set mode: stream"):
        build_loader(_cfg(server.url, mode="offset"))
    with pytest.raises(ValueError, match="states cannot be streamed"):
        LoaderConfig(shards=[str(shards)], mode="stream", states="x")
    with pytest.raises(ValueError, match="cannot read the shard index http://127.0.0.1:9/nope/index.json"):
        build_loader(_cfg("http://127.0.0.1:9/nope", retries=0))
    one = f"{server.url}/{read_index(shards)['shards'][0]['name']}"
    assert len(build_loader(_cfg(one)).catalog.paths) == 1
    with pytest.raises(ValueError, match="streaming splits by shard.*write more, smaller shards"):
        len(build_loader(_cfg(one), rank=0, world_size=2))


def test_worker_memory_is_bounded_by_the_shuffle_buffer(shards):
    """The plan's batches are completed in stream order: when a batch is handed out, the worker
    holds at most the shuffle buffer plus one open batch per bucket of samples not yet used."""
    from westkit.data import streaming

    cfg = _cfg(str(shards), mode="stream", num_workers=1, shuffle_buffer=6)
    loader = build_loader(cfg)
    cat = loader.catalog
    plan = streaming.stream_plan(cat, cfg, 0, 1, 1, train=True)[0]
    order = np.concatenate([np.arange(cat.bounds[s], cat.bounds[s + 1]) for s in loader.planner.slot_shards(0, 0)])
    where = {int(i): n for n, i in enumerate(order)}
    read, used = 0, set()
    most = 0
    for _, ids in plan:
        read = max(read, max(where[i] + 1 for i in ids.tolist()))
        used.update(ids.tolist())
        most = max(most, read - len(used & set(order[:read].tolist())))
    assert most <= cfg.shuffle_buffer + (len(cfg.buckets) + 1) * cfg.max_batch_size
    # and the buffer really shuffles: another order than with no buffer
    flat = [i for _, ids in plan for i in ids.tolist()]
    plain = [i for _, ids in streaming.stream_plan(cat, LoaderConfig(**{**cfg.__dict__, "shuffle_buffer": 0}),
                                                   0, 1, 1, True)[0] for i in ids.tolist()]
    assert sorted(flat) == sorted(plain) and flat != plain


def test_resume_mid_shard_with_long_member_names_falls_back_to_the_shard_start(tmp_path):
    """Names over 100 characters get an extra GNU long-name header, so a member's header is not
    512 bytes before its data: the reader notices and reads that shard from its start."""
    from westkit.data.shards import Entry, write_shards

    from data_helpers import Tone

    long = "x" * 110
    write_shards([Entry(key=f"{long}{i:03d}", text=f"utterance {i}", audio=Tone(0.5 + 0.05 * i)) for i in range(12)],
                 tmp_path / "long", shard_bytes=10**6, workers=1, progress=False)
    cfg = _cfg(str(tmp_path / "long"), mode="stream", shuffle=False, num_workers=0, max_batch_size=2)
    expected = [k for k, _ in _take(build_loader(cfg), 5)]
    first = build_loader(cfg)
    got = [k for k, _ in _take(first, 2)]
    resumed = build_loader(cfg)
    resumed.load_state_dict(first.state_dict())
    got += [k for k, _ in _take(resumed, 3)]
    assert got == expected and len({k for b in got for k in b}) == 10


EXIT_SCRIPT = """
import sys
from westkit.data.loader import LoaderConfig, build_loader
cfg = LoaderConfig(shards=[sys.argv[1]], max_batch_seconds=6.0, max_batch_size=4, min_duration=0.0,
                   buckets=[1.0, 2.0, 3.0], num_workers=2, seed=3, mode=sys.argv[2])
batches = iter(build_loader(cfg))
next(batches)
print("took a batch", flush=True)
# `batches` (and its 2 workers) are still alive when the interpreter exits
"""


@pytest.mark.parametrize("mode", ["stream", "offset"])
def test_a_process_exits_while_a_loader_iterator_with_workers_is_alive(shards, tmp_path, mode):
    """Workers ignore SIGTERM (a preemption signal is the rank's to handle), so multiprocessing's
    exit handler, which SIGTERMs daemonic children and then joins them, used to wait forever
    for the workers of an iterator still alive at exit (torch's own cleanup is a no-op by
    then). This hung the 2-process elastic-resume run after its last step, now and then."""
    import subprocess
    import sys

    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    try:
        done = subprocess.run([sys.executable, str(script), str(shards), mode], timeout=60,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired as e:
        subprocess.run(["pkill", "-9", "-f", str(script)])
        raise AssertionError(f"the process did not exit 60 s after its last line: {e.stdout}")
    assert done.returncode == 0 and "took a batch" in done.stdout, done.stderr[-2000:]

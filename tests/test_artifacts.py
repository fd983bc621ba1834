import json
import os
import subprocess
import sys
import textwrap

import pytest

from pretrain.core.artifacts import MANIFEST, ArtifactStore, file_digest, format_lineage
from pretrain.core.codeversion import code_version
from pretrain.core.errors import InputError
from pretrain.core.ids import artifact_id

# Ids as the store requires them: a stage letter, "-" and 20 hex digits.
C1 = "c-" + "1" * 20
V1 = "v-" + "1" * 20


def test_ids_are_stable_and_sensitive_to_every_input():
    reference = artifact_id("vocab", {"vocab_size": 100}, inputs={"corpus": "c-1"}, sources=[{"sha256": "aa"}])
    assert reference == artifact_id("vocab", {"vocab_size": 100}, inputs={"corpus": "c-1"}, sources=[{"sha256": "aa", "path": "moved"}])
    assert reference.startswith("v-")
    variants = [
        artifact_id("vocab", {"vocab_size": 101}, inputs={"corpus": "c-1"}, sources=[{"sha256": "aa"}]),
        artifact_id("vocab", {"vocab_size": 100}, inputs={"corpus": "c-2"}, sources=[{"sha256": "aa"}]),
        artifact_id("vocab", {"vocab_size": 100}, inputs={"corpus": "c-1"}, sources=[{"sha256": "ab"}]),
        artifact_id("tokens", {"vocab_size": 100}, inputs={"corpus": "c-1"}, sources=[{"sha256": "aa"}]),
    ]
    assert len({reference, *variants}) == 5


def test_ids_are_stable_across_processes():
    code = "from pretrain.core.ids import artifact_id; print(artifact_id('ingest', {'a': [1, 2]}, sources=[{'sha256': 'x'}]))"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert outputs == {artifact_id("ingest", {"a": [1, 2]}, sources=[{"sha256": "x"}]) + "\n"}


def test_code_version_follows_local_imports_but_not_main_guard():
    # tokens imports formats and the fast tokenizer module, so their code (and the packages they are in) is
    # part of its version; the stage CLI glue is not.
    from pretrain.core.codeversion import code_dependencies

    assert {"pretrain.tokens", "pretrain.data.formats", "pretrain.models.fast_tokenizers", "pretrain.data", "pretrain"} <= code_dependencies("pretrain.tokens")
    assert "pretrain.chain" not in code_dependencies("pretrain.tokens")
    assert code_version("pretrain.tokens") != code_version("pretrain.ingest")


def _publish(store, aid, content="x", inputs=None, fail=False):
    with store.build("ingest", aid, config={"k": 1}, inputs=inputs or {}, sources=[{"path": "raw.txt", "size": 1, "sha256": "ff"}]) as b:
        (b.dir / "data.txt").write_text(content)
        (b.dir / "sub").mkdir()
        (b.dir / "sub" / "more.txt").write_text(content * 2)
        b.metrics["documents"] = 1
        if fail:
            raise RuntimeError("disk full")


def test_publish_writes_manifest_with_hashes(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    _publish(store, C1)
    manifest = store.manifest(C1)
    assert manifest["id"] == C1 and manifest["stage"] == "ingest"
    assert set(manifest["files"]) == {"data.txt", "sub/more.txt"}
    assert manifest["files"]["data.txt"]["size"] == 1
    assert manifest["files"]["data.txt"]["sha256"] == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    assert manifest["metrics"] == {"documents": 1}
    assert {"python", "packages", "host", "git"} <= set(manifest["environment"])
    assert store.ids() == [C1]


def test_a_failed_build_leaves_no_artifact(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(RuntimeError):
        _publish(store, C1, fail=True)
    assert not store.exists(C1)
    assert store.ids() == []
    assert not (tmp_path / "store" / C1).exists()


@pytest.mark.slow
def test_a_killed_build_leaves_nothing_a_rerun_would_mistake_for_done(tmp_path):
    # A process killed mid-build (kill -9: no cleanup code runs) leaves only a staging folder.
    script = textwrap.dedent(
        f"""
        import os, signal
        from pretrain.core.artifacts import ArtifactStore
        store = ArtifactStore({str(tmp_path / "store")!r})
        with store.build("ingest", {C1!r}, config={{}}) as b:
            (b.dir / "half.bin").write_bytes(b"0" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script])
    assert result.returncode == -9
    store = ArtifactStore(tmp_path / "store")
    assert not store.exists(C1) and store.ids() == []
    assert list((tmp_path / "store" / ".tmp").iterdir())  # the debris is in staging, not at the id
    _publish(store, C1)  # and a re-run publishes normally
    assert store.exists(C1)


def test_manifestless_folder_is_not_an_artifact(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    (tmp_path / "store" / C1).mkdir()
    (tmp_path / "store" / C1 / "data.txt").write_text("partial")
    assert not store.exists(C1)
    with pytest.raises(InputError, match=f"artifact {C1} is not in the store"):
        store.manifest(C1)
    _publish(store, C1, content="y")
    assert (tmp_path / "store" / C1 / "data.txt").read_text() == "y"


@pytest.mark.slow
def test_concurrent_publish_of_the_same_id_keeps_one(tmp_path):
    # Two processes build the same id at once (two workers of a scheduled run). Both stage their files,
    # wait for each other, then publish together: one copy wins, the other process succeeds and keeps it.
    script = textwrap.dedent(
        """
        import logging, sys, time
        from pathlib import Path
        from pretrain.core.artifacts import ArtifactStore
        logging.basicConfig(level=logging.INFO)
        store, barrier, name = ArtifactStore(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
        with store.build("ingest", "c-11111111111111111111", config={"k": 1}) as b:
            (b.dir / "data.txt").write_text(name)
            (b.dir / "sub").mkdir()
            (b.dir / "sub" / "more.txt").write_text(name * 2)
            (barrier / name).touch()
            deadline = time.time() + 120
            while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
                time.sleep(0.001)
        print(store.manifest("c-11111111111111111111")["files"]["data.txt"]["sha256"])
        """
    )
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    store = ArtifactStore(tmp_path / "store")
    procs = [
        subprocess.Popen([sys.executable, "-c", script, store.url, str(barrier), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("first", "second")
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    assert store.ids() == [C1]
    kept = (tmp_path / "store" / C1 / "data.txt").read_text()
    assert kept in ("first", "second")
    manifest = store.manifest(C1)
    assert set(manifest["files"]) == {"data.txt", "sub/more.txt"}
    for name, meta in manifest["files"].items():  # one complete copy: files and manifest from the same process
        assert file_digest(tmp_path / "store" / C1 / name) == {"size": meta["size"], "sha256": meta["sha256"]}, name
    assert (tmp_path / "store" / C1 / "sub" / "more.txt").read_text() == kept * 2
    # Both processes read back the one copy; exactly one of them found it already there.
    assert {out.strip() for out, _ in outputs} == {manifest["files"]["data.txt"]["sha256"]}
    assert sum("was published concurrently; keeping the existing copy" in err for _, err in outputs) == 1
    assert not list((tmp_path / "store" / ".tmp").iterdir())  # the loser's staging folder is gone


def test_remote_store_uploads_manifest_last_and_downloads_verified(tmp_path):
    store = ArtifactStore("memory://dapt-test-store", cache_dir=tmp_path / "cache")
    _publish(store, C1)
    assert store.exists(C1) and not store.is_local
    local = store.local_dir(C1)
    assert (local / "sub" / "more.txt").read_text() == "xx"
    assert json.loads((local / MANIFEST).read_text())["id"] == C1
    # A corrupted remote file is caught on download.
    with store.fs.open(store._path(C1, "data.txt"), "wb") as f:
        f.write(b"tampered")
    fresh = ArtifactStore("memory://dapt-test-store", cache_dir=tmp_path / "cache2")
    with pytest.raises(InputError, match="data.txt does not match its manifest .sha256"):
        fresh.local_dir(C1)


def test_lineage_reaches_raw_files(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    _publish(store, C1)
    with store.build("vocab", V1, config={}, inputs={"corpus": C1}) as b:
        (b.dir / "x").write_text("1")
    tree = store.lineage(V1)
    assert tree["inputs"]["corpus"]["id"] == C1
    text = format_lineage(tree)
    assert f"{V1}  vocab" in text and f"{C1}  ingest" in text and "file raw.txt" in text
    os.remove(tmp_path / "store" / C1 / MANIFEST)
    with pytest.raises(InputError):
        store.lineage(V1)

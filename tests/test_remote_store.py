"""The artifact store on S3: moto's S3 server on 127.0.0.1, reached through s3fs, the whole pipeline on it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pretrain.core.artifacts import MANIFEST, ArtifactStore

# moto's S3 server in another process.
pytestmark = pytest.mark.slow

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """`moto_server` on a free loopback port, for this module; stopped at the end."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_store(s3_endpoint, monkeypatch, tmp_path):
    """A fresh bucket; s3fs (and any process started from here) pointed at the local endpoint."""
    import fsspec

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    # botocore reads this in every process (shard workers too); fsspec's config covers this one.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    monkeypatch.setenv("DAPT_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"dapt-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    return f"s3://{bucket}/store"


def test_publish_uploads_the_manifest_last_and_retries_io_errors(s3_store, monkeypatch, tmp_path):
    import pretrain.core.artifacts as artifacts

    monkeypatch.setattr(artifacts.time, "sleep", lambda s: None)
    store = ArtifactStore(s3_store, cache_dir=tmp_path / "c1")
    uploads, failures = [], {"weights.bin": 1}
    real_put = store.fs.put_file

    def put_file(local, remote, **kw):
        name = remote.rsplit("/", 1)[-1]
        if failures.get(name):
            failures[name] -= 1
            raise ConnectionResetError("connection reset by peer")  # an OSError: retried
        uploads.append(name)
        return real_put(local, remote, **kw)

    monkeypatch.setattr(store.fs, "put_file", put_file)
    with store.build("base", "b-aaaaaaaaaaaaaaaaaaa1", {"x": 1}) as b:
        (b.dir / "weights.bin").write_bytes(os.urandom(4096))
        (b.dir / "sub").mkdir()
        (b.dir / "sub" / "config.json").write_text("{}")
    assert uploads == ["config.json", "weights.bin", MANIFEST]  # manifest last; the reset upload retried
    assert store.ids() == ["b-aaaaaaaaaaaaaaaaaaa1"]


def test_a_crash_before_the_manifest_leaves_no_artifact(s3_store, monkeypatch, tmp_path):
    store = ArtifactStore(s3_store, cache_dir=tmp_path / "c1")
    real_put = store.fs.put_file

    def put_file(local, remote, **kw):
        if remote.endswith(MANIFEST):
            raise KeyboardInterrupt  # the process dies between the data files and the manifest
        return real_put(local, remote, **kw)

    monkeypatch.setattr(store.fs, "put_file", put_file)
    with pytest.raises(KeyboardInterrupt):
        with store.build("base", "b-ccccccccccccccccccc1", {}) as b:
            (b.dir / "weights.bin").write_bytes(b"half a model")
    monkeypatch.setattr(store.fs, "put_file", real_put)
    assert store.fs.exists(f"{s3_store.removeprefix('s3://')}/b-ccccccccccccccccccc1/weights.bin")  # the debris is there
    reader = ArtifactStore(s3_store, cache_dir=tmp_path / "c2")
    assert reader.ids() == [] and not reader.exists("b-ccccccccccccccccccc1")  # and ignored


def test_the_pipeline_on_s3_publishes_lists_reads_back_and_keeps_lineage(s3_store, tiny_config, tmp_path):
    """Every stage on an S3 store (through the Prefect flows, on a temporary Prefect database)."""
    import flows  # noqa: F401  (Prefect defaults)
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline
    from pretrain.chain import plan
    from pretrain.configfile import validate_config
    from pretrain.core.artifacts import file_digest, format_lineage

    # One fine-tuning epoch: this test is about the store, not the scores.
    config = validate_config({**tiny_config, "store": s3_store, "evaluate": {**tiny_config["evaluate"], "num_epochs": 1}})
    with prefect_test_harness(server_startup_timeout=180):
        result = pipeline(config=config)
    assert result["ids"] == plan(config) and not any(result["cached"].values())

    # A second machine: the same bucket, an empty local cache.
    reader = ArtifactStore(s3_store, cache_dir=tmp_path / "other-machine")
    built = [i for i in reader.ids() if not i.startswith("f-")]
    runs = {i for i in reader.ids() if i.startswith("f-")}  # the evaluation's fine-tuning runs, artifacts of their own
    assert sorted(built) == sorted(result["ids"].values())
    assert [reader.manifest(i)["stage"] for i in built] == list(result["ids"])  # oldest first: build order
    assert runs and runs == {v for v in reader.manifest(result["ids"]["evaluate"])["inputs"].values() if v.startswith("f-")}

    model = reader.local_dir(result["ids"]["pretrain"])  # downloaded and checked against the manifest
    manifest = reader.manifest(result["ids"]["pretrain"])
    for name, meta in manifest["files"].items():
        assert file_digest(model / name)["sha256"] == meta["sha256"]
    assert (model / "model" / "model.safetensors").is_file()

    lineage = format_lineage(reader.lineage(result["ids"]["report"]))
    for stage, aid in result["ids"].items():
        assert aid in lineage, stage
    assert f"file {tiny_config['ingest']['inputs'][0]}" in lineage  # back to the raw corpus file
    assert manifest["inputs"] == {"base": result["ids"]["base"], "vocab": result["ids"]["vocab"], "tokens": result["ids"]["tokens"]}
    assert reader.location(result["ids"]["report"]) == f"{s3_store}/{result['ids']['report']}"

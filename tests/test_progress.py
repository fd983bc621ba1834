"""pretrain.core.progress: a bar on a terminal, periodic log lines elsewhere, nothing off the main process."""

from __future__ import annotations

import logging
import re

import pytest

from pretrain.core import progress as progress_module
from pretrain.core.progress import progress, set_mode


@pytest.fixture(autouse=True)
def _reset_mode():
    yield
    set_mode(None)


def test_log_mode_logs_every_interval_and_once_at_the_end(caplog):
    set_mode("log")
    with caplog.at_level(logging.INFO, logger="pretrain.core.progress"):
        with progress(total=4, desc="fine-tune base seed 0", unit="step", log_every_s=0) as bar:
            for _ in range(4):
                bar.update(1)
            bar.set_postfix(loss=0.25)
    lines = [r.getMessage() for r in caplog.records if r.name == "pretrain.core.progress"]
    assert lines[0].startswith("fine-tune base seed 0: 1/4 step (25%)")
    assert "about" in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("fine-tune base seed 0: 4/4 step (100%)") and lines[-1].endswith("loss 0.25")
    assert len(lines) == 5  # one per update (interval 0), one at the end


def test_log_mode_is_quiet_between_intervals(caplog):
    set_mode("log")
    with caplog.at_level(logging.INFO, logger="pretrain.core.progress"):
        with progress(total=1000, desc="tokens", unit="doc", log_every_s=3600) as bar:
            for _ in range(1000):
                bar.update(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "pretrain.core.progress"]
    assert lines == [lines[0]] and lines[0].startswith("tokens: 1,000/1,000 doc (100%)")


def test_bar_mode_draws_a_tqdm_bar(capsys):
    set_mode("bar")
    with progress(total=3, desc="embed", unit="batch") as bar:
        for _ in range(3):
            bar.update(1)
    err = capsys.readouterr().err
    assert "embed" in err and "3/3" in err


def test_off_and_other_ranks_show_nothing(caplog, capsys, monkeypatch):
    set_mode("off")
    with caplog.at_level(logging.INFO, logger="pretrain.core.progress"), progress(total=2, desc="quiet", log_every_s=0) as bar:
        bar.update(2)
    set_mode("log")
    monkeypatch.setattr(progress_module, "is_main_process", lambda: False)
    with caplog.at_level(logging.INFO, logger="pretrain.core.progress"), progress(total=2, desc="rank 1", log_every_s=0) as bar:
        bar.update(2)
    assert not [r for r in caplog.records if r.name == "pretrain.core.progress"]
    assert capsys.readouterr().err == ""


def test_auto_is_log_lines_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.delenv("DAPT_PROGRESS", raising=False)
    assert progress_module.mode() == "log"  # pytest captures stderr: not a terminal
    monkeypatch.setenv("DAPT_PROGRESS", "off")
    assert progress_module.mode() == "off"
    with pytest.raises(ValueError, match="not one of"):
        set_mode("loud")


def test_the_loops_of_verify_and_embed_show_progress_in_both_modes(tmp_path, tiny_base, caplog, capsys, monkeypatch):
    """Real loops, not the helper alone: byte counts scaled (verify re-hashes GBs), batches counted (embed)."""
    from pretrain.core import registry
    from pretrain.core.artifacts import ArtifactStore
    from pretrain.handoff.embed import embed

    store = ArtifactStore(tmp_path / "store")
    aid = "m-" + "4" * 20
    with store.build("pretrain", aid, config={}) as build:
        (build.dir / "weights.bin").write_bytes(b"\0" * 3_000_000)
    monkeypatch.setenv("DAPT_PROGRESS_EVERY_S", "0")
    set_mode("log")
    with caplog.at_level(logging.INFO, logger="pretrain.core.progress"):
        assert registry.verify(store, aid) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "pretrain.core.progress"]
    assert lines[0].startswith(f"verify {aid}: 1.05 MB/3 MB (35%)") and re.search(r"[kMG]B/s", lines[0])
    assert lines[-1].startswith(f"verify {aid}: 3 MB/3 MB (100%)")

    source = tmp_path / "in.txt"
    source.write_text("\n".join(f"text number {i} about grain and crude" for i in range(5)) + "\n")
    set_mode("bar")
    embed(None, str(tiny_base), str(source), str(tmp_path / "o.parquet"), batch_size=2)
    err = capsys.readouterr().err
    assert "embed in.txt" in err and "3/3" in err and "batch" in err

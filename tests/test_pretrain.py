import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM

from conftest import build_until, crash_after
from pretrain.chain import plan, run_stage
from pretrain.core.artifacts import ArtifactStore
from pretrain.data.formats import load_meta
from pretrain.training import kit
from pretrain.training.mlm import Masking, MaskedLM


@pytest.fixture
def upstream(tiny_config):
    """Config, store and ids with every stage before pretrain built."""
    return build_until(tiny_config, "tokens")


def _with(config, **pretrain_overrides):
    return config.model_copy(update={"pretrain": config.pretrain.model_copy(update=pretrain_overrides)})


def test_pretrain_lowers_validation_perplexity_and_saves_a_loadable_model(upstream):
    config, store, ids = upstream
    config = _with(config, max_steps=60, eval_every_steps=20, learning_rate=5e-3)
    aid = run_stage("pretrain", config, store, ids)
    assert aid == plan(config)["pretrain"]
    m = store.manifest(aid)
    metrics = m["metrics"]
    assert metrics["validation_perplexity_after"] < 0.7 * metrics["validation_perplexity_before"]
    assert metrics["steps"] == 60 and metrics["tokens"] == 60 * 8 * 32
    assert m["inputs"] == {"base": ids["base"], "vocab": ids["vocab"], "tokens": ids["tokens"]}
    folder = store.local_dir(aid)
    curve = json.loads((folder / "curve.json").read_text())
    assert [p["step"] for p in curve if "validation_perplexity" in p] == [0, 20, 40, 60]
    assert all(torch.isfinite(torch.tensor(p["loss"])) for p in curve if "loss" in p)
    # The saved folder is a plain Hugging Face model whose weights are what was trained.
    model = AutoModelForMaskedLM.from_pretrained(folder / "model")
    saved = load_file(folder / "model" / "model.safetensors")
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    base = AutoModelForMaskedLM.from_pretrained(store.local_dir(ids["base"]))
    assert not torch.equal(base.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert (folder / "model" / "tokenizer.json").is_file()
    assert not store.work_dir(aid).joinpath("checkpoints").exists()  # cleaned after publishing


# Resume is exact within a precision: bf16 autocast (what `auto` picks on a CPU with bf16 units) too.
@pytest.mark.parametrize("precision", ["no", pytest.param("bf16", marks=pytest.mark.slow)])
def test_same_seed_same_weights_and_resume_from_checkpoint(upstream, precision):
    config, store, ids = upstream
    reference = _with(config, max_steps=8, checkpoint_every_steps=4, seed=3, mixed_precision=precision)
    first = store.local_dir(run_stage("pretrain", reference, store, ids)) / "model" / "model.safetensors"
    expected = load_file(first)

    # The same run in a second store, interrupted after its step-4 checkpoint, then re-run.
    other = ArtifactStore(store.url + "-2")
    for stage in ("base", "ingest", "vocab", "tokens"):
        run_stage(stage, reference, other, ids)
    with crash_after(MaskedLM, training_calls=6), pytest.raises(KeyboardInterrupt):
        run_stage("pretrain", reference, other, ids)
    aid = plan(reference)["pretrain"]
    assert not other.exists(aid)
    assert (other.work_dir(aid) / "checkpoints" / "step-00000004" / "trainer_state.json").is_file()
    resumed = load_file(other.local_dir(run_stage("pretrain", reference, other, ids)) / "model" / "model.safetensors")
    assert other.manifest(aid)["metrics"]["steps"] == 8
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


def test_a_run_whose_only_change_is_its_checkpoint_cadence_resumes(upstream, caplog):
    """Checkpoint cadence and retention are execution settings: the same id, the same work folder, so a
    re-run that checkpoints more often resumes where the crashed run stopped; and the loss curve does
    not depend on them (a checkpoint between log steps does not cut the loss window)."""
    config, store, ids = upstream
    reference = _with(config, max_steps=8, log_every_steps=4, seed=5)
    aid = run_stage("pretrain", reference, store, ids)
    expected = load_file(store.local_dir(aid) / "model" / "model.safetensors")
    curve = json.loads((store.local_dir(aid) / "curve.json").read_text())

    other = ArtifactStore(store.url + "-2")
    for stage in ("base", "ingest", "vocab", "tokens"):
        run_stage(stage, reference, other, ids)
    every_three = _with(reference, checkpoint_every_steps=3, keep_checkpoints=1)
    assert plan(every_three)["pretrain"] == aid
    with crash_after(MaskedLM, training_calls=5), pytest.raises(KeyboardInterrupt):
        run_stage("pretrain", every_three, other, ids)
    assert sorted(p.name for p in (other.work_dir(aid) / "checkpoints").iterdir()) == ["step-00000003"]
    every_two = _with(reference, checkpoint_every_steps=2, keep_checkpoints=3)
    with caplog.at_level("INFO", logger="pretrain.training.kit"):
        assert run_stage("pretrain", every_two, other, ids) == aid
    assert "resuming from" in caplog.text and "step-00000003 (step 3 of 8)" in caplog.text
    resumed = load_file(other.local_dir(aid) / "model" / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)
    again = json.loads((other.local_dir(aid) / "curve.json").read_text())
    # Points at log steps (4, 8) and the validation perplexity before and after; none at a checkpoint.
    assert [p["step"] for p in again] == [p["step"] for p in curve] == [0, 4, 8, 8]
    assert [p.get("loss") for p in again] == [p.get("loss") for p in curve]
    assert [p.get("validation_perplexity") for p in again] == [p.get("validation_perplexity") for p in curve]


def test_nan_loss_stops_with_a_clear_error(upstream, monkeypatch):
    config, store, ids = upstream
    config = _with(config, max_steps=8, log_every_steps=2)
    original = MaskedLM.forward

    def nan_from_step_three(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        nan_from_step_three.calls += self.training
        return loss * float("nan") if nan_from_step_three.calls > 2 else loss

    nan_from_step_three.calls = 0
    monkeypatch.setattr(MaskedLM, "forward", nan_from_step_three)
    with pytest.raises(kit.TrainingError, match="loss became nan between steps 3 and 4"):
        run_stage("pretrain", config, store, ids)
    assert not store.exists(plan(config)["pretrain"])


def test_derived_values():
    from pretrain.core.config import PretrainConfig
    from pretrain.core.errors import UserError

    cfg = PretrainConfig(max_tokens=10_000, global_batch_size=16, micro_batch_size=4, max_seq_length=64)
    assert kit.total_steps(cfg) == 10  # ceil(10000 / (16 * 64))
    assert kit.accumulation_steps("pretrain", cfg, world_size=1) == 4
    assert kit.accumulation_steps("pretrain", cfg, world_size=2) == 2
    with pytest.raises(UserError, match="not a multiple of micro_batch_size"):
        kit.accumulation_steps("pretrain", cfg, world_size=3)
    factor = kit.lr_lambda(warmup_steps=2, steps=10)
    assert [round(factor(s), 3) for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.125]


def test_micro_batches_are_the_same_for_any_world_size(upstream):
    config, store, ids = upstream
    folder = store.local_dir(ids["tokens"])
    blocks = kit.Blocks(folder, "train", 32)
    masking = kit.make_masking(config.pretrain, load_meta(folder))

    def global_batches(world, accum, start=0):
        per_rank = [kit.MicroBatches(blocks, masking, 2, 0, accum, world, r, start, 3) for r in range(world)]
        out = {}
        for r, data in enumerate(per_rank):
            for k in range(len(data)):
                out[data.global_index(k)] = data[k]["input_ids"]
        return out

    one = global_batches(world=1, accum=4)
    two = global_batches(world=2, accum=2)
    assert sorted(one) == sorted(two) == list(range(12))
    assert all(torch.equal(one[g], two[g]) for g in one)
    resumed = global_batches(world=1, accum=4, start=1)  # seek: starts at micro-batch 4, nothing replayed
    assert sorted(resumed) == list(range(4, 12)) and all(torch.equal(resumed[g], one[g]) for g in resumed)


def test_tensorboard_tracking_goes_into_the_artifact(upstream):
    config, store, ids = upstream
    config = _with(config, max_steps=4, log_every_steps=2, log_with=["tensorboard"])
    folder = store.local_dir(run_stage("pretrain", config, store, ids))
    events = list((folder / "logs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("loss")] == [2, 4]


def test_missing_tracker_package_is_a_clear_error(upstream, monkeypatch):
    import importlib.util

    from pretrain.core.errors import UserError

    config, store, ids = upstream
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match="pretrain.log_with: 'wandb' needs the 'wandb' package"):
        run_stage("pretrain", _with(config, log_with=["wandb"]), store, ids)


@pytest.mark.slow
def test_dataloader_workers_change_nothing(upstream):
    config, store, ids = upstream
    config = _with(config, max_steps=4, num_workers=0)
    other = ArtifactStore(store.url + "-workers")
    for stage in ("base", "ingest", "vocab", "tokens"):
        run_stage(stage, config, other, ids)
    a = load_file(store.local_dir(run_stage("pretrain", config, store, ids)) / "model" / "model.safetensors")
    b = load_file(other.local_dir(run_stage("pretrain", _with(config, num_workers=2), other, ids)) / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_whole_word_masking_run(upstream, monkeypatch):
    config, store, ids = upstream
    calls = []  # every masking of the run (training micro-batches and validation): ids, word starts, positions
    original = Masking.__call__

    def recording(self, input_ids, generator, word_starts=None):
        out = original(self, input_ids, generator, word_starts=word_starts)
        calls.append((input_ids, word_starts, out["masked_positions"]))
        return out

    monkeypatch.setattr(Masking, "__call__", recording)
    aid = run_stage("pretrain", _with(config, max_steps=4, whole_word_mask=True), store, ids)
    assert aid != plan(config)["pretrain"] and store.manifest(aid)["config"]["whole_word_mask"] is True

    special = torch.tensor(sorted(set(load_meta(store.local_dir(ids["tokens"]))["special_ids"].values())))
    assert len(calls) >= 4 + 4  # 4 training micro-batches, 32 validation blocks in batches of 8
    masked_words = masked_multi_piece_words = 0
    for input_ids, starts, positions in calls:
        assert starts is not None and starts.shape == input_ids.shape
        selected = torch.zeros(input_ids.numel(), dtype=torch.bool)
        selected[positions] = True
        selected = selected.view(input_ids.shape)
        ordinary = ~torch.isin(input_ids, special)
        assert not (selected & ~ordinary).any()  # special tokens are never selected
        word = torch.cumsum(starts.long(), dim=1)  # the word each token belongs to, per row
        for row in range(input_ids.size(0)):
            for w in word[row][selected[row]].unique():
                pieces = (word[row] == w) & ordinary[row]
                # every piece of a word with a selected piece is selected: whole words, never part of one
                assert selected[row][pieces].all(), f"row {row}: word {int(w)} is partly masked"
                masked_words += 1
                masked_multi_piece_words += int(pieces.sum()) > 1
    assert masked_multi_piece_words > 0 and masked_words > masked_multi_piece_words


def test_word_eval_masks_whole_words_chosen_by_position(upstream):
    config, store, ids = upstream
    folder = store.local_dir(ids["tokens"])
    meta = load_meta(folder)
    batches = kit.word_eval_batches(folder, 32, 10_000, 8, seed=0, probability=0.3)
    total_words = 0
    for batch, words in batches:
        ids_ = batch["input_ids"]
        assert ids_.shape[1] == 32 and (ids_[:, 0] == meta["special_ids"]["cls"]).all()
        flat = ids_.view(-1)
        assert (flat[batch["masked_positions"]] == meta["special_ids"]["mask"]).all()
        assert not torch.isin(batch["masked_labels"], torch.tensor(list(meta["special_ids"].values()))).any()
        total_words += words
        assert words <= len(batch["masked_labels"])
    assert total_words > 0
    again = kit.word_eval_batches(folder, 32, 10_000, 8, seed=0, probability=0.3)
    assert all(torch.equal(a["masked_positions"], b["masked_positions"]) for (a, _), (b, _) in zip(batches, again))

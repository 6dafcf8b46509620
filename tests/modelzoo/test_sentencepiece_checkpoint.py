"""A Hugging Face folder with a SentencePiece tokenizer.model (no tokenizer.json) tokenizes as sentencepiece does,
uploads as a .zip, validates to ready and generates; a corrupt tokenizer.model is rejected with a reason."""
import json
import random
import zipfile
from pathlib import Path

import pytest
import sentencepiece as spm
from django.core.files.uploadedfile import SimpleUploadedFile

from modelzoo import services
from modelzoo.engine import Engine, SamplingParams, generate_text, inspect_checkpoint, load_checkpoint
from modelzoo.engine.tokenizer import tokenizer_from_hf_dir
from modelzoo.models import Checkpoint
from tests.modelzoo.gguf_factory import CHATML
from tests.modelzoo.hf_dir_factory import write_random_hf_dir

WORDS = ("the quick brown fox jumps over a lazy dog while hello world models tokenize text into pieces "
         "café naïve déjà vu 東京 日本語 Grüße señor 12 345 6789 def return print(x) {} [] == != += 😀").split()
TEXTS = [
    "", "hello world", " leading space", "   three leading spaces", "trailing space ", "double  space inside",
    "café naïve 東京 日本語 😀 🦙", "tabs\tand\nnew lines\n\n", "digits 1234567890 and punctuation?!",
    "def f(x):\n    return x + 1\n", "Ünïcödé wörds ζ λ ω", "\n starts with a newline",
]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    """A small BPE SentencePiece model with byte fallback and ChatML control symbols, Llama-2 style normalizer."""
    folder = tmp_path_factory.mktemp("spm")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(400)]
    (folder / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=420, model_type="bpe",
        byte_fallback=True, character_coverage=0.99, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, control_symbols=["<|im_start|>", "<|im_end|>"],
        minloglevel=2,
    )
    return folder / "tokenizer.model"


@pytest.fixture(scope="module")
def reference(sp_model) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(sp_model))


def tokenizer_config(**extra) -> bytes:
    return json.dumps({"chat_template": CHATML, "bos_token": "<s>", "eos_token": "<|im_end|>",
                       "add_bos_token": True, **extra}).encode()


def spm_hf_dir(directory: Path, sp_model: Path, *, model_bytes: bytes | None = None) -> Path:
    return write_random_hf_dir(directory, vocab_size=420, bos_token_id=1, eos_token_id=2, tokenizer_files={
        "tokenizer.model": sp_model.read_bytes() if model_bytes is None else model_bytes,
        "tokenizer_config.json": tokenizer_config(),
    })


def zip_dir(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in folder.iterdir():
            zf.write(file, f"{folder.name}/{file.name}")
    return archive


@pytest.fixture
def storage(settings, tmp_path: Path) -> Path:
    settings.CHECKPOINT_DIR = tmp_path / "store"
    return settings.CHECKPOINT_DIR


def test_it_encodes_and_decodes_as_sentencepiece_does(tmp_path, sp_model, reference):
    info = inspect_checkpoint(spm_hf_dir(tmp_path / "tiny-spm", sp_model))
    tok = info.tokenizer
    assert tok.bos_token_id == 1 and tok.add_bos
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == [1, *reference.encode(text)], text
        assert tok.decode(ids[1:]) == text, text
    # A leading space is kept as its own piece before the dummy prefix, as sentencepiece does.
    assert [reference.id_to_piece(i) for i in tok.encode(" the")[1:]] == ["\u2581", "\u2581the"]
    # Byte fallback: a character the model never saw becomes its UTF-8 bytes.
    assert [reference.id_to_piece(i) for i in tok.encode("🦙")[1:]][-4:] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]


def test_it_keeps_control_tokens_whole_and_reads_specials_from_the_configs(tmp_path, sp_model, reference):
    info = inspect_checkpoint(spm_hf_dir(tmp_path / "tiny-spm", sp_model))
    tok = info.tokenizer
    start, end = reference.piece_to_id("<|im_start|>"), reference.piece_to_id("<|im_end|>")
    assert tok.eos_token_ids == frozenset({2, end})  # config.json's eos plus tokenizer_config.json's
    text = "<|im_start|>user\nhi there<|im_end|>\n"
    assert tok.encode(text) == [1, start, *reference.encode("user\nhi there"), end, *reference.encode("\n")]
    assert tok.decode(tok.encode(text)) == "<s>" + text
    prompt = info.chat_template.render([{"role": "user", "content": "Say hello."}], add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode(prompt).count(start) == 2


def test_it_reads_added_tokens_and_add_bos_from_tokenizer_config(tmp_path, sp_model, reference):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(sp_model.read_bytes())
    (folder / "tokenizer_config.json").write_bytes(tokenizer_config(
        add_bos_token=False, added_tokens_decoder={"420": {"content": "<|tool|>", "special": True}},
    ))
    tok = tokenizer_from_hf_dir(folder, eos_token_ids=frozenset(), bos_token_id=None)
    assert tok.bos_token_id == 1 and not tok.add_bos  # bos from tokenizer_config.json, but not prepended
    assert tok.encode("fox<|tool|>dog") == [*reference.encode("fox"), 420, *reference.encode("dog")]
    assert tok.decode(tok.encode("fox<|tool|>dog")) == "fox<|tool|>dog"
    assert tok.vocab_size == 421


def test_it_refuses_a_truncated_model_or_a_folder_without_a_tokenizer(tmp_path, sp_model):
    folder = tmp_path / "tok"
    folder.mkdir()
    with pytest.raises(ValueError, match="needs tokenizer.json or a SentencePiece tokenizer.model"):
        tokenizer_from_hf_dir(folder, eos_token_ids=frozenset(), bos_token_id=None)
    (folder / "tokenizer.model").write_bytes(sp_model.read_bytes()[:300])
    with pytest.raises(ValueError, match="tokenizer.model is not a valid SentencePiece model"):
        tokenizer_from_hf_dir(folder, eos_token_ids=frozenset(), bos_token_id=None)


@pytest.mark.django_db
@pytest.mark.slow
def test_it_uploads_a_zip_with_tokenizer_model_validates_to_ready_and_generates(staff_client, tmp_path, sp_model,
                                                                                storage):
    archive = zip_dir(spm_hf_dir(tmp_path / "tiny-spm", sp_model), tmp_path / "tiny-spm.zip")
    response = staff_client.post("/admin/modelzoo/checkpoint/add/", {
        "name": "tiny-spm", "upload": SimpleUploadedFile("tiny-spm.zip", archive.read_bytes()),
    })
    assert response.status_code == 302
    validated = services.checkpoint_validate(checkpoint_id=Checkpoint.objects.get(name="tiny-spm").pk)
    assert validated.status == Checkpoint.Status.READY, validated.status_reason
    assert validated.format == "safetensors" and validated.context_length == 256
    folder = Path(validated.path)
    assert (folder / "tokenizer.model").is_file() and not (folder / "tokenizer.json").exists()

    loaded = load_checkpoint(folder, device="cpu")
    prompt_ids = loaded.tokenizer.encode(
        loaded.chat_template.render([{"role": "user", "content": "Say hello."}], add_generation_prompt=True)
    )
    engine = Engine(loaded, max_batch_size=1, max_seq_len=64)
    streamed: list[str] = []
    try:
        result = generate_text(engine, loaded.tokenizer, prompt_ids, SamplingParams(max_tokens=6, temperature=0.0),
                               on_text=streamed.append)
    finally:
        engine.close()
    assert 1 <= len(result.token_ids) <= 6
    assert all(0 <= t < 420 for t in result.token_ids)
    assert result.text == "".join(streamed) == loaded.tokenizer.decode(result.token_ids)


@pytest.mark.django_db
@pytest.mark.slow
def test_it_rejects_a_corrupt_tokenizer_model_with_a_readable_reason(staff_client, tmp_path, sp_model, storage):
    folder = spm_hf_dir(tmp_path / "bad-spm", sp_model, model_bytes=b"this is not a sentencepiece model\n" * 20)
    archive = zip_dir(folder, tmp_path / "bad-spm.zip")
    with archive.open("rb") as source:
        stored = services.checkpoint_store(name="bad-spm", source=source, file_name="bad-spm.zip",
                                           queue_validation=False)
    rejected = services.checkpoint_validate(checkpoint_id=stored.pk)
    assert rejected.status == Checkpoint.Status.REJECTED
    assert "tokenizer.model is not a valid SentencePiece model" in rejected.status_reason
    page = staff_client.get(f"/admin/modelzoo/checkpoint/{stored.pk}/change/").content.decode()
    assert "tokenizer.model is not a valid SentencePiece model" in page

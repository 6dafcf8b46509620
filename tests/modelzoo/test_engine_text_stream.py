"""The caller-side text of a generation: incremental detokenizing, stop strings and streamed deltas, on the bundled
byte-level tokenizer and a small SentencePiece one (no model is loaded)."""

from __future__ import annotations

import random

import pytest

from modelzoo.engine import TextStreamer, default_checkpoint_path, inspect_checkpoint
from modelzoo.engine.text_stream import find_stop, safe_prefix_len
from modelzoo.engine.tokenizer import sentencepiece_from_model_file

TEXTS = [
    "Plain ASCII, nothing special.",
    "Emoji: 🎉🚀 and a family 👨‍👩‍👧 at the end 🙂",
    "日本語の文章です。東京は大きい。",
    "中文和English混在, 再见! ¿Qué tal? Ça va — très bien…",
]


@pytest.fixture(scope="module")
def tokenizer():
    return inspect_checkpoint(default_checkpoint_path()).tokenizer


def stream(tokenizer, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], TextStreamer, int]:
    """Push every id (until a stop); returns the deltas, the streamer and how many ids were pushed."""
    streamer = TextStreamer(tokenizer, stop=stop)
    deltas, pushed = [], 0
    for token_id in ids:
        deltas.append(streamer.push(token_id))
        pushed += 1
        if streamer.stopped:
            break
    deltas.append(streamer.finish())
    return [d for d in deltas if d], streamer, pushed


def test_it_finds_the_earliest_stop():
    assert find_stop("abc END def STOP", ("STOP", "END")) == 4
    assert find_stop("abc", ("x",)) is None


def test_it_holds_back_possible_stop_prefixes():
    assert safe_prefix_len("hello wor", ("world",)) == 6
    assert safe_prefix_len("hello", ("world",)) == 5
    assert safe_prefix_len("ab<|", ("<|end|>",)) == 2
    assert safe_prefix_len("ab<|", ()) == 4


@pytest.mark.parametrize("text", TEXTS)
def test_its_deltas_join_to_the_decoded_text_and_never_split_a_character(tokenizer, text):
    ids = tokenizer.encode(text)
    deltas, streamer, _ = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids) == streamer.text == text
    assert all("\ufffd" not in d for d in deltas)


def test_the_multibyte_texts_really_split_characters_across_tokens(tokenizer):
    # Otherwise the test above would not exercise holding back half a character.
    assert any("\ufffd" in tokenizer.decode([i]) for text in TEXTS[1:] for i in tokenizer.encode(text))


def test_its_deltas_join_to_the_decoded_text_for_any_ids(tokenizer):
    rng = random.Random(0)
    for _ in range(20):  # arbitrary ids: stray bytes, half characters, special tokens
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 60))]
        deltas, streamer, _ = stream(tokenizer, ids)
        assert "".join(deltas) == streamer.text == tokenizer.decode(ids)


@pytest.mark.parametrize("text", TEXTS[1:])
def test_it_cuts_at_a_stop_string_inside_multibyte_text(tokenizer, text):
    ids = tokenizer.encode(text)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    deltas, streamer, _ = stream(tokenizer, ids, stop=(stop,))
    assert streamer.stopped
    assert "".join(deltas) == streamer.text == text[: text.index(stop)]


def test_it_stops_on_a_stop_string_spanning_two_tokens_at_the_token_that_completes_it(tokenizer):
    text = "The quick brown fox jumps over the lazy dog and keeps running."
    ids = tokenizer.encode(text)
    pieces = [tokenizer.decode([i]) for i in ids]
    i = next(k for k in range(2, len(pieces) - 1) if len(pieces[k]) >= 3 and len(pieces[k + 1]) >= 3)
    stop = pieces[i][-2:] + pieces[i + 1][:2]  # no single token holds it
    assert not any(stop in p for p in pieces)
    deltas, streamer, pushed = stream(tokenizer, ids, stop=("never there", stop))
    cut = text.index(stop)
    assert streamer.stopped and pushed == i + 2  # stopped by the second token, not later
    assert "".join(deltas) == text[:cut]
    assert len(deltas) > 1  # the text before the stop was streamed as it came


def test_it_releases_a_held_back_prefix_once_it_cannot_begin_a_stop_string(tokenizer):
    streamer = TextStreamer(tokenizer, stop=("<|end|>",))
    out = [streamer.push(i) for i in tokenizer.encode("a <|en")]
    assert "".join(out) == "a "
    out += [streamer.push(i) for i in tokenizer.encode("joy")]
    assert "".join(out) + streamer.finish() == "a <|enjoy" and not streamer.stopped


def test_it_flushes_a_trailing_half_character_at_the_end(tokenizer):
    ids = tokenizer.encode("ok 🎉")
    half = next(n for n in range(len(ids), 0, -1) if tokenizer.decode(ids[:n]).endswith("\ufffd"))
    streamer = TextStreamer(tokenizer)
    shown = "".join(streamer.push(i) for i in ids[:half])
    assert "\ufffd" not in shown
    assert shown + streamer.finish() == tokenizer.decode(ids[:half])


def test_it_ignores_ids_after_a_stop(tokenizer):
    streamer = TextStreamer(tokenizer, stop=("b",))
    ids = [tokenizer.encode(c)[0] for c in "abc"]
    assert [streamer.push(i) for i in ids] == ["a", "", ""]
    assert streamer.stopped and streamer.finish() == "" and streamer.text == "a"


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    """A small SentencePiece BPE with byte fallback: its decoder drops the first piece's dummy-prefix space."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("spm")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog hello world café naïve 東京 日本語 😀 12 345".split()
    (folder / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)))
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=0.98, minloglevel=2,
    )
    return sentencepiece_from_model_file(folder / "tokenizer.model", {"add_bos_token": False},
                                         eos_token_ids=frozenset(), bos_token_id=None)


@pytest.mark.parametrize("text", ["hello world", "  two leading spaces", *TEXTS, "日本語 😀 東京 café 🦙 ✓"])
def test_its_deltas_join_to_the_decoded_text_with_sentencepiece(sentencepiece, text):
    ids = sentencepiece.encode(text)
    deltas, streamer, _ = stream(sentencepiece, ids)
    assert "".join(deltas) == streamer.text == sentencepiece.decode(ids)
    assert all("\ufffd" not in d for d in deltas) or "\ufffd" in streamer.text

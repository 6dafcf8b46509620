"""generation.rendering: markdown fences split into prose and code; everything escaped."""
from __future__ import annotations

from generation.rendering import Segment, render_output, split_markdown


def test_it_splits_prose_and_fenced_code():
    text = "Intro text.\n```python\nprint('hi')\n```\nOutro.\n~~~\nplain\n~~~"
    assert split_markdown(text) == [
        Segment("prose", "Intro text."),
        Segment("code", "print('hi')", "python"),
        Segment("prose", "Outro."),
        Segment("code", "plain", ""),
    ]


def test_it_treats_an_unclosed_fence_as_code_to_the_end():
    assert split_markdown("Start\n```js\nlet x = 1;\nlet y") == [
        Segment("prose", "Start"), Segment("code", "let x = 1;\nlet y", "js")]


def test_it_keeps_text_without_fences_as_prose():
    assert split_markdown("just words") == [Segment("prose", "just words")]
    assert split_markdown("") == []


def test_it_escapes_code_inside_a_block():
    html = render_output("```html\n<script>alert(1)</script>\n```", task="code")
    assert "<script>" not in html
    assert "&lt;" in html


def test_it_falls_back_to_the_job_language_and_then_plain_text():
    assert '<span class="k">fn</span>' in render_output("```\nfn main() {}\n```", task="code", language="rust")
    html = render_output("```nosuchlang\n<b>\n```", task="code", language="")
    assert "&lt;b&gt;" in html


def test_it_escapes_prose():
    assert render_output("<b>hi</b> & bye", task="qa") == '<div class="prose">&lt;b&gt;hi&lt;/b&gt; &amp; bye</div>'

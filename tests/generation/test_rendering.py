"""generation.rendering: model output as sanitized Markdown with highlighted code; markdown fences split into
prose and code; everything the model writes stays text."""
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


def test_it_escapes_html_in_markdown():
    assert render_output("<b>hi</b> & bye", task="qa") == (
        '<div class="markdown"><p>&lt;b&gt;hi&lt;/b&gt; &amp; bye</p>\n</div>')
    assert render_output("<img src=x onerror=alert(1)>\n\n<script>x</script>", task="chat") == (
        '<div class="markdown"><p>&lt;img src=x onerror=alert(1)&gt;</p>\n'
        '<p>&lt;script&gt;x&lt;/script&gt;</p>\n</div>')


def test_it_keeps_only_safe_links_and_no_images():
    html = render_output("[a](javascript:alert(1)) [b](https://example.com) ![c](https://example.com/c.png)",
                         task="qa")
    assert "javascript:" not in html.replace("[a](javascript:alert(1))", "")
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">b</a>' in html
    assert "<img" not in html


def test_it_drops_inline_styles_of_aligned_tables():
    html = render_output("| a | b |\n|:-|-:|\n| 1 | 2 |", task="qa")
    assert "<table>" in html and "<td>2</td>" in html
    assert "style" not in html


def test_it_renders_lists_emphasis_and_code_spans():
    html = render_output("Use `x`:\n\n1. *one*\n2. **two**", task="summarize")
    assert "<code>x</code>" in html and "<em>one</em>" in html and "<strong>two</strong>" in html
    assert "<ol>" in html


def test_it_keeps_a_completion_as_plain_escaped_text():
    assert render_output("<b>hi</b>", task="completion") == '<div class="prose">&lt;b&gt;hi&lt;/b&gt;</div>'


def test_it_makes_every_code_block_reachable_by_the_keyboard():
    """A code block scrolls sideways, so it is focusable (axe: scrollable-region-focusable); the attribute is set
    by the sanitizer, so text cannot choose another value."""
    html = render_output("Code:\n\n```python\nprint('x' * 200)\n```\n\n    indented\n", task="code")
    assert html.count('<pre tabindex="0">') == 2
    html = render_output('<pre tabindex="5">x</pre>', task="qa")
    assert "<pre" not in html and "&lt;pre" in html

"""Model output to HTML. Output is untrusted text: it is rendered as Markdown with raw HTML off (markdown-it-py:
any tag the model writes comes out as text), fenced code is highlighted with Pygments (which escapes it), and
the result passes an allowlist sanitizer (nh3) before it is marked safe. The job page's script renders the
same Markdown while tokens arrive (markdown-it + DOMPurify, vendored under static/generation/vendor/); this
stored rendering replaces it when the job ends.

Images are not rendered (the Content-Security-Policy would refuse remote ones anyway), nor are inline styles;
links get rel="noopener noreferrer nofollow" and only http(s) and mailto targets. Code blocks (<pre>) get
tabindex="0": they scroll sideways, and a keyboard user must be able to reach and scroll them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import nh3
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.lexers.special import TextLexer
from pygments.util import ClassNotFound

# An opening fence (``` or ~~~ plus an optional language) up to its closing fence or, when the
# generation stopped inside the block, the end of the text.
_FENCE = re.compile(
    r"^(?P<fence>```|~~~)[ \t]*(?P<lang>[\w+#.-]*)[^\n]*\n(?P<code>.*?)(?:^(?P=fence)[ \t]*$\n?|\Z)",
    re.MULTILINE | re.DOTALL,
)

FORMATTER = HtmlFormatter(cssclass="highlight", wrapcode=True)

#: What the sanitizer lets through: Markdown's own elements, Pygments' spans, and class attributes only.
ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "li", "strong", "em", "s",
    "del", "code", "pre", "a", "table", "thead", "tbody", "tr", "th", "td", "div", "span",
}
ALLOWED_ATTRIBUTES = {"*": {"class"}, "a": {"href", "title"}, "ol": {"start"}}
#: Set on every element of the tag after sanitizing: a code block scrolls sideways, so the keyboard must reach it.
SET_ATTRIBUTES = {"pre": {"tabindex": "0"}}


@dataclass(frozen=True)
class Segment:
    kind: str  # "prose" | "code"
    text: str
    language: str = ""


def split_markdown(text: str) -> list[Segment]:
    """Prose and fenced code blocks, in order; blank prose between blocks is dropped."""
    segments: list[Segment] = []
    position = 0
    for match in _FENCE.finditer(text):
        prose = text[position : match.start()]
        if prose.strip():
            segments.append(Segment("prose", prose.strip("\n")))
        segments.append(Segment("code", match.group("code").rstrip("\n"), match.group("lang").lower()))
        position = match.end()
    rest = text[position:]
    if rest.strip():
        segments.append(Segment("prose", rest.strip("\n")))
    return segments


def _lexer(language: str, fallback: str):
    for name in (language, fallback):
        if name:
            try:
                return get_lexer_by_name(name)
            except ClassNotFound:
                continue
    return TextLexer()


def highlight_code(code: str, *, language: str, fallback: str = "") -> SafeString:
    return mark_safe(highlight(code, _lexer(language, fallback), FORMATTER))  # Pygments escapes the code


def render_prose(text: str) -> SafeString:
    return format_html('<div class="prose">{}</div>', text)


def _markdown(fallback_language: str) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])
    md.disable("image")

    def fence(renderer: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        language = token.info.strip().split(maxsplit=1)[0].lower() if token.info.strip() else ""
        code = token.content[:-1] if token.content.endswith("\n") else token.content
        return str(highlight_code(code, language=language, fallback=fallback_language))

    md.add_render_rule("fence", fence)
    md.add_render_rule("code_block", fence)
    return md


def sanitize(html: str) -> str:
    return nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
                     link_rel="noopener noreferrer nofollow", strip_comments=True,
                     set_tag_attribute_values=SET_ATTRIBUTES)


def render_markdown(text: str, *, language: str = "") -> SafeString:
    """Sanitized HTML of Markdown text; fenced code without a language is highlighted as `language`."""
    if not text:
        return mark_safe("")
    return mark_safe(f'<div class="markdown">{sanitize(_markdown(language).render(text))}</div>')


def render_output(text: str, *, task: str, language: str = "") -> SafeString:
    """HTML for a job's output: Markdown with highlighted code for the answer tasks; a completion (raw text that
    continues a prompt, not an answer) stays plain escaped text."""
    if not text:
        return mark_safe("")
    if task == "completion":
        return render_prose(text)
    return render_markdown(text, language=language)


def pygments_css() -> str:
    return FORMATTER.get_style_defs(".highlight")


__all__ = ["Segment", "split_markdown", "render_output", "render_markdown", "sanitize", "highlight_code",
           "pygments_css"]

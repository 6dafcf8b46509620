"""Model output to HTML. Output is untrusted text: everything is escaped. For code jobs the model's markdown is
split into prose and fenced code blocks, and the code is highlighted with Pygments (which escapes it too)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
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


def render_output(text: str, *, task: str, language: str = "") -> SafeString:
    """HTML for a job's output: escaped prose, and for code jobs highlighted code blocks kept apart from it."""
    if not text:
        return mark_safe("")
    if task != "code":
        return render_prose(text)
    parts: list[str] = []
    for segment in split_markdown(text):
        if segment.kind == "code":
            parts.append(str(highlight_code(segment.text, language=segment.language, fallback=language)))
        else:
            parts.append(str(render_prose(segment.text)))
    return mark_safe("".join(parts))


def pygments_css() -> str:
    return FORMATTER.get_style_defs(".highlight")


__all__ = ["Segment", "split_markdown", "render_output", "highlight_code", "pygments_css"]

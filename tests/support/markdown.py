"""Reading the project's Markdown as a test needs it: code blocks and inline code, the
`keygen ...` command lines in them (synopses expanded), heading anchors as GitHub makes them,
and relative links."""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The pages a reader follows: the README and every page of docs/.
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# `keygen` where a shell command starts: the line's (after a `$ ` prompt and NAME=value
# prefixes), or after `$(`, a pipe, `;` or `&&`; a path before it (.venv/bin/) is allowed.
_COMMAND = re.compile(
    r"(?:^|\$\(|[;&]\s*|\|\s+|^\$\s+)\s*(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"
    r"((?:[\w.~-]*/)*keygen)(?=\s|$|\))"
)


@dataclass(frozen=True)
class Line:
    """One line of a page: its number, its text, and whether it is inside a code block."""

    number: int
    text: str
    in_code_block: bool


def lines(path: Path) -> Iterator[Line]:
    """The page's lines, code blocks' continuation lines (trailing backslash) joined."""
    in_block = False
    pending: tuple[int, str] | None = None
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if _FENCE.match(text):
            in_block = not in_block
            continue
        if in_block:
            if pending is not None:
                number, text = pending[0], pending[1].rstrip() + " " + text.strip()
                pending = None
            if text.endswith("\\"):
                pending = (number, text[:-1])
                continue
        yield Line(number, text, in_block)


def inline_code(text: str) -> list[str]:
    """The inline code spans of a prose line (a table's escaped pipes unescaped)."""
    return [span.replace("\\|", "|") for span in _INLINE.findall(text)]


@dataclass(frozen=True)
class Command:
    """A `keygen ...` command line found in a page."""

    path: Path
    line: int
    text: str  # from `keygen` to where the shell command ends
    inline: bool  # in inline code (may name a command without all it needs)

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.text}"


def _command_end(text: str) -> int:
    """Where the shell command starting at ``text[0]`` ends: an unquoted `)`, `;`, `&`, `>`,
    `<`, a backtick, a comment, or a pipe between spaces outside a synopsis' brackets."""
    quote: str | None = None
    depth = 0
    for i, char in enumerate(text):
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char in ");&<>`":
            return i
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return i
        elif char == "|" and depth == 0 and text[i - 1 : i].isspace():
            return i
    return len(text)


def commands(path: Path) -> Iterator[Command]:
    """Every `keygen ...` command line of a page, in code blocks and in inline code."""
    for line in lines(path):
        chunks = [line.text] if line.in_code_block else inline_code(line.text)
        for chunk in chunks:
            for match in _COMMAND.finditer(chunk):
                rest = chunk[match.end(1) :]
                text = "keygen" + rest[: _command_end(rest)].rstrip()
                yield Command(path, line.number, text, inline=not line.in_code_block)


def _tokens(text: str) -> list[str]:
    spaced = re.sub(r"(\[|\])", r" \1 ", text)
    spaced = re.sub(r"\s\|\s", " | ", spaced)
    return shlex.split(spaced)


def _group(tokens: list[str], start: int) -> tuple[list[list[object]], int]:
    """Parse ``tokens[start:]`` up to the matching `]`: the alternatives of a group, each a
    sequence of tokens and nested groups; and where the group ends."""
    alternatives: list[list[object]] = [[]]
    i = start
    while i < len(tokens):
        token = tokens[i]
        if token == "[":
            nested, i = _group(tokens, i + 1)
            alternatives[-1].append(nested)
            continue
        i += 1
        if token == "]":
            return alternatives, i
        if token == "|":
            alternatives.append([])
        else:
            alternatives[-1].append(token)
    return alternatives, i


def _expand(sequence: list[object]) -> list[list[str]]:
    """The argument lists a synopsis sequence stands for: every optional group left out, then
    each group's each alternative in turn; a token `a|b` each way."""
    variants = [_flat(sequence)]
    for position, item in enumerate(sequence):
        before, after = _flat(sequence[:position]), _flat(sequence[position + 1 :])
        if isinstance(item, str):
            choices = item.split("|")[1:] if "|" in item.strip("|") else []
            variants.extend([*before, choice, *after] for choice in choices)
        else:
            assert isinstance(item, list)
            for alternative in item:
                variants.extend([*before, *inner, *after] for inner in _expand(alternative))
    return variants


def _flat(sequence: list[object]) -> list[str]:
    """A sequence with its groups left out and each token's first choice."""
    return [item.split("|")[0] for item in sequence if isinstance(item, str)]


def argument_lists(command: Command) -> list[list[str]]:
    """The argument lists (after `keygen`) a command line stands for; a synopsis
    (`[--dir DIR]`, `up|down`) gives several."""
    tokens = _tokens(command.text)[1:]
    # `--ssl-certfile/--ssl-keyfile`: two options named at once.
    tokens = list(
        itertools.chain.from_iterable(
            t.split("/") if t.startswith("--") and "/--" in t else [t] for t in tokens
        )
    )
    # `FILE...`, `[--url URL]...`, `--url URL ...`: repetition, not text; `--faults ...` (after
    # an option) stands for the option's value and is kept.
    tokens = [t[:-3] if re.fullmatch(r"[A-Z][A-Z0-9_]*\.\.\.", t) else t for t in tokens]
    tokens = [
        t for i, t in enumerate(tokens) if t != "..." or (i > 0 and tokens[i - 1].startswith("-"))
    ]
    alternatives, _ = _group(tokens, 0)
    expanded = itertools.chain.from_iterable(_expand(a) for a in alternatives)
    return [list(v) for v in dict.fromkeys(tuple(v) for v in expanded)]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation dropped, each
    space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[`*]|<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page has: its headings' (a repeated one gets -1, -2, ...) and HTML ones."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in lines(path):
        if line.in_code_block:
            continue
        found.update(_HTML_ANCHOR.findall(line.text))
        match = _HEADING.match(line.text)
        if match is None:
            continue
        base = anchor(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> Iterator[tuple[int, str]]:
    """The page's links that point inside the repository (prose only, not code)."""
    for line in lines(path):
        if line.in_code_block:
            continue
        prose = _INLINE.sub("", line.text)
        for target in _LINK.findall(prose):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:...
                yield line.number, target

"""One report document, rendered to Markdown and to a self-contained HTML page.

The report is built once as a tree of blocks (:class:`Section`, :class:`Paragraph`,
:class:`Table`, :class:`Figure`, :class:`BulletList`, :class:`Code`) and each renderer walks
that tree, so ``report.md`` and ``report.html`` cannot say different things. Headings follow
the nesting: the document title is level 1, a top-level section level 2, and the title of a
table, figure or section inside it one level deeper.

The HTML page inlines its figures as base64 PNG data URIs and its CSS in a ``<style>`` element:
no scripts, no external assets, so it opens from disk or an e-mail anywhere
(``scripts/screenshot_report.sh`` checks it in headless Chromium).
"""

from __future__ import annotations

import base64
import dataclasses
import html
from pathlib import Path
from typing import Iterator, Union


@dataclasses.dataclass
class Paragraph:
    """Text; ``lead`` is set in bold before it, ``kind="caveat"`` draws it as a highlighted box."""

    text: str
    lead: str = ""
    kind: str = ""


@dataclasses.dataclass
class BulletList:
    """A list of plain-text items, with an optional line before it (``"Notes:"``)."""

    items: list[str]
    title: str = ""


@dataclasses.dataclass
class Code:
    """Preformatted text (commands, JSON)."""

    text: str
    language: str = ""


@dataclasses.dataclass
class Table:
    """A table as text cells. ``key`` names it in HTML (id, class) and in ``summary.json``."""

    key: str
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Figure:
    """A PNG written under the report folder (``path`` absolute)."""

    key: str
    title: str
    caption: str
    path: Path

    def relative(self, out_dir: Path) -> str:
        return self.path.relative_to(out_dir).as_posix()


@dataclasses.dataclass
class Section:
    """A titled group of blocks (sections nest)."""

    title: str
    blocks: list["Block"]
    key: str = ""


Block = Union[Paragraph, BulletList, Code, Table, Figure, Section]


@dataclasses.dataclass
class Document:
    title: str
    blocks: list[Block]

    def walk(self) -> Iterator[Block]:
        """Every block, depth first, in reading order."""
        stack = list(reversed(self.blocks))
        while stack:
            block = stack.pop()
            yield block
            if isinstance(block, Section):
                stack.extend(reversed(block.blocks))

    def tables(self) -> list[Table]:
        return [b for b in self.walk() if isinstance(b, Table)]

    def figures(self) -> list[Figure]:
        return [b for b in self.walk() if isinstance(b, Figure)]


# ----------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_block(block: Block, level: int, out_dir: Path) -> list[str]:
    hashes = "#" * level
    if isinstance(block, Paragraph):
        text = (f"**{block.lead}** " if block.lead else "") + block.text
        return [f"> {text}" if block.kind == "caveat" else text, ""]
    if isinstance(block, BulletList):
        return ([block.title, ""] if block.title else []) + [f"- {item}" for item in block.items] + [""]
    if isinstance(block, Code):
        return [f"```{block.language}", block.text, "```", ""]
    if isinstance(block, Table):
        lines = [f"{hashes} {block.title}", ""] + ([block.caption, ""] if block.caption else [])
        lines += ["| " + " | ".join(_md_cell(h) for h in block.header) + " |",
                  "|" + "|".join("---" for _ in block.header) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return lines + [""]
    if isinstance(block, Figure):
        return [f"{hashes} {block.title}", "", f"![{block.title}]({block.relative(out_dir)})", "", block.caption, ""]
    if isinstance(block, Section):
        lines = [f"{hashes} {block.title}", ""]
        for child in block.blocks:
            lines += _markdown_block(child, level + 1, out_dir)
        return lines
    raise TypeError(f"unknown block {block!r}")


def to_markdown(document: Document, out_dir: Path) -> str:
    """Markdown with figures linked by their path relative to ``out_dir`` (the report folder)."""
    lines = [f"# {document.title}", ""]
    for block in document.blocks:
        lines += _markdown_block(block, 2, out_dir)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- HTML

HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 24px auto; max-width: 1220px;
       color: #222; font-size: 14px; line-height: 1.4; padding: 0 12px; }
h1 { font-size: 24px; } h2 { font-size: 19px; border-bottom: 1px solid #ccc; padding-bottom: 3px; margin-top: 28px; }
h3 { font-size: 16px; margin-bottom: 4px; }
table { border-collapse: collapse; margin: 6px 0 14px 0; font-size: 12.5px; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
tbody tr:nth-child(even) { background: #fafafa; }
td.status { color: #8a5a00; font-style: italic; }
td.detected { font-weight: bold; color: #1a5e20; }
p.caption { color: #555; margin: 2px 0 4px 0; }
p.caveat { background: #fff4e0; border-left: 4px solid #e69f00; padding: 8px 12px; }
figure { margin: 10px 0 20px 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 13px; }
pre { background: #f4f4f4; padding: 8px; overflow-x: auto; font-size: 12px; white-space: pre-wrap; }
"""

#: Cell texts that are a status rather than a measurement (drawn in italics) or a detected difference.
STATUS_PREFIXES = ("not run", "failed", "not tested")
DETECTED_PREFIX = "detected"


def _cell_class(text: str) -> str:
    if text.startswith(STATUS_PREFIXES):
        return ' class="status"'
    if text.startswith(DETECTED_PREFIX):
        return ' class="detected"'
    return ""


def _html_block(block: Block, level: int) -> list[str]:
    esc = html.escape
    if isinstance(block, Paragraph):
        lead = f"<b>{esc(block.lead)}</b> " if block.lead else ""
        css = ' class="caveat"' if block.kind == "caveat" else ""
        return [f"<p{css}>{lead}{esc(block.text)}</p>"]
    if isinstance(block, BulletList):
        title = f"<p>{esc(block.title)}</p>" if block.title else ""
        return [title + "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>"]
    if isinstance(block, Code):
        return [f"<pre>{esc(block.text)}</pre>"]
    if isinstance(block, Table):
        head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td{_cell_class(c)}>{esc(c)}</td>" for c in row) + "</tr>\n"
                       for row in block.rows)
        caption = f'<p class="caption">{esc(block.caption)}</p>\n' if block.caption else ""
        return [f'<h{level} id="{esc(block.key)}">{esc(block.title)}</h{level}>\n{caption}'
                f'<table class="{esc(block.key)}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>']
    if isinstance(block, Figure):
        data = base64.b64encode(block.path.read_bytes()).decode("ascii")
        return [f'<figure id="{esc(block.key)}"><h{level}>{esc(block.title)}</h{level}>'
                f'<img alt="{esc(block.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"]
    if isinstance(block, Section):
        anchor = f' id="{esc(block.key)}"' if block.key else ""
        lines = [f"<section{anchor}>", f"<h{level}>{esc(block.title)}</h{level}>"]
        for child in block.blocks:
            lines += _html_block(child, min(level + 1, 6))
        return lines + ["</section>"]
    raise TypeError(f"unknown block {block!r}")


def to_html(document: Document) -> str:
    """One self-contained HTML page (inline CSS, figures as data URIs, no scripts)."""
    title = html.escape(document.title)
    lines = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
             f"<style>{HTML_STYLE}</style></head><body>", f"<h1>{title}</h1>"]
    for block in document.blocks:
        lines += _html_block(block, 2)
    lines += ["</body></html>", ""]
    return "\n".join(lines)

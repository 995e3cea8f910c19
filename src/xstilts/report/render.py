"""A report as a list of blocks, rendered as Markdown, as self-contained HTML and (tables only) as LaTeX.

Cell and paragraph text is plain Unicode; a newline inside a table cell is a line break.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    """A section title; level 1 is the report's title."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """An unordered list."""

    items: list[str]


@dataclass(frozen=True)
class Table:
    """Rows of text cells; `sections` maps a row index to the label of the group of rows starting there;
    `numeric` right-aligns every column but the first."""

    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    sections: dict[int, str] = field(default_factory=dict)
    numeric: bool = False


@dataclass(frozen=True)
class Image:
    """A PNG file next to the report."""

    file: str
    caption: str


Block = Heading | Paragraph | Bullets | Table | Image

MARKDOWN_SPECIAL = re.compile(r"([\\`*_|]|<(?=[A-Za-z/!?]))")
LATEX_CHARACTERS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "−": "$-$", "×": r"$\times$",
    "α": r"$\alpha$", "–": "--", "*": r"$^{*}$",
}
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; font-size: 16px;
       line-height: 1.5; color: #1a1a1a; margin: 0; background: #fff; }
main { max-width: 1400px; margin: 0 auto; padding: 24px 20px 64px; box-sizing: border-box; }
h1 { font-size: 28px; margin-bottom: 8px; } h2 { font-size: 22px; margin-top: 40px; border-bottom: 1px solid #ddd; }
h3 { font-size: 18px; margin-top: 28px; }
figure { margin: 20px 0; } figcaption { font-size: 14px; color: #444; margin-top: 6px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; }
th, td { padding: 3px 5px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #888; background: #f4f4f4; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.section th { background: #eef3f8; font-style: italic; text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
li { margin: 4px 0; }
"""


def _markdown_text(text: str) -> str:
    return MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("\n", "<br>")


def _markdown_table(table: Table) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(_markdown_text(cell) for cell in cells) + " |"

    align = ["---"] + ["---:" if table.numeric else "---"] * (len(table.header) - 1)
    lines = [line(table.header), "| " + " | ".join(align) + " |"]
    for index, row in enumerate(table.rows):
        if index in table.sections:
            lines.append(f"| **{_markdown_text(table.sections[index])}** |" + " |" * (len(table.header) - 1))
        lines.append(line(row))
    return lines + ([f"\n*{_markdown_text(table.caption)}*"] if table.caption else [])


def render_markdown(blocks: list[Block]) -> str:
    """GitHub-flavoured Markdown; images link to the PNG files next to the report."""
    parts = []
    for block in blocks:
        match block:
            case Heading(text, level):
                parts.append(f"{'#' * level} {_markdown_text(text)}")
            case Paragraph(text):
                parts.append(_markdown_text(text))
            case Bullets(items):
                parts.append("\n".join(f"- {_markdown_text(item)}" for item in items))
            case Table():
                parts.append("\n".join(_markdown_table(block)))
            case Image(file, caption):
                parts.append(f"![{_markdown_text(caption)}]({file})\n\n*{_markdown_text(caption)}*")
    return "\n\n".join(parts) + "\n"


def _html_text(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def _html_table(table: Table) -> str:
    def cell(tag: str, text: str, column: int) -> str:
        kind = ' class="num"' if table.numeric and column else ""
        return f"<{tag}{kind}>{_html_text(text)}</{tag}>"

    head = "".join(cell("th", text, column) for column, text in enumerate(table.header))
    body = []
    for index, row in enumerate(table.rows):
        if index in table.sections:
            label = _html_text(table.sections[index])
            body.append(f'<tr class="section"><th colspan="{len(table.header)}">{label}</th></tr>')
        body.append("<tr>" + "".join(cell("td", text, column) for column, text in enumerate(row)) + "</tr>")
    caption = f"<figcaption>{_html_text(table.caption)}</figcaption>" if table.caption else ""
    return (f'<figure><div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f"</table></div>{caption}</figure>")


def render_html(blocks: list[Block], title: str, image_dir: Path) -> str:
    """One self-contained HTML page: inline CSS, images embedded as base64 PNG read from `image_dir`."""
    parts = []
    for block in blocks:
        match block:
            case Heading(text, level):
                parts.append(f"<h{level}>{_html_text(text)}</h{level}>")
            case Paragraph(text):
                parts.append(f"<p>{_html_text(text)}</p>")
            case Bullets(items):
                parts.append("<ul>" + "".join(f"<li>{_html_text(item)}</li>" for item in items) + "</ul>")
            case Table():
                parts.append(_html_table(block))
            case Image(file, caption):
                data = base64.b64encode((image_dir / file).read_bytes()).decode("ascii")
                parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                             f"<figcaption>{_html_text(caption)}</figcaption></figure>")
    head = (f'<meta charset="utf-8">\n<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n{head}\n</head>\n'
            f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def _latex_text(text: str) -> str:
    return "".join(LATEX_CHARACTERS.get(character, character) for character in text)


def _latex_cell(text: str, align: str) -> str:
    lines = [_latex_text(line) for line in text.split("\n")]
    if len(lines) == 1:
        return lines[0]
    return rf"\begin{{tabular}}[c]{{@{{}}{align}@{{}}}}" + r" \\ ".join(lines) + r"\end{tabular}"


def render_latex(tables: list[Table]) -> str:
    """Each table as a `table` float (needs the booktabs and graphicx packages), scaled to the text width."""
    floats = []
    for table in tables:
        align = "l" + ("r" if table.numeric else "l") * (len(table.header) - 1)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_text(table.caption)}}}",
                 r"\resizebox{\textwidth}{!}{%", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
                 " & ".join(_latex_text(text) for text in table.header) + r" \\", r"\midrule"]
        for index, row in enumerate(table.rows):
            if index in table.sections:
                label = _latex_text(table.sections[index])
                lines.append(rf"\midrule \multicolumn{{{len(table.header)}}}{{l}}{{\textit{{{label}}}}} \\")
            lines.append(" & ".join(_latex_cell(text, align[column]) for column, text in enumerate(row)) + r" \\")
        floats.append("\n".join(lines + [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]))
    preamble = "% Generated by `xstilts report`; needs \\usepackage{booktabs} and \\usepackage{graphicx}.\n\n"
    return preamble + "\n\n".join(floats) + "\n"

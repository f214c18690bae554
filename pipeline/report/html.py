"""A Markdown report as one self-contained HTML page (Snakemake's ``--report`` shows HTML, images
and PDF files, and offers anything else only as a download)."""

from __future__ import annotations

from pathlib import Path


HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .6rem}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}img{max-width:100%}code{background:#f3f3f3}"""


def markdown_html(text: str, base: Path, title: str) -> str:
    """``report.md`` as one self-contained HTML page: tables rendered, plots embedded.

    Snakemake's ``--report`` shows HTML, images and PDF files but offers anything else (Markdown,
    TSV) only as a download, so the result tables reach its report through this page. The
    Markdown is rendered by markdown-it-py (CommonMark with tables); links to the PNG plots beside
    the report become inline images (data URIs), so the page works wherever it is opened.
    """
    import base64
    import html as html_mod
    import re

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)

    def embed(m: re.Match) -> str:
        target = base / html_mod.unescape(m.group(1))
        if target.suffix.lower() != ".png" or not target.is_file():
            return m.group(0)
        data = base64.b64encode(target.read_bytes()).decode()
        return (f'<a href="{m.group(1)}">{m.group(2)}</a><br><img alt="{m.group(2)}" '
                f'src="data:image/png;base64,{data}">')

    body = re.sub(r'<a href="([^"]+)">([^<]*)</a>', embed, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html_mod.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n{body}</body></html>\n")

"""The HTML of `scale ui`: one shell per page (``static/ui.js`` fills it from the JSON API) and the error page.

Every script, style sheet and font is served from the package (``/static``): no page needs the internet.
Vendored as published on npm (``npm pack``), licences beside them: marked 18.3.0
(``vendor/marked/marked.umd.js``) and KaTeX 0.19.1 (``katex.min.js``, ``katex.min.css`` and its
woff2 fonts only — every browser that runs the page reads woff2; ≈ 0.7 MB in all).
"""

from __future__ import annotations

from html import escape

from scale_graph.ui.views import masked

#: Page name → title; ``static/ui.js`` renders the page named in ``<body data-page>``.
PAGES = {"runs": "Runs", "run": "Run", "diff": "Diff", "evaluations": "Evaluations", "evaluation": "Evaluation"}

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · SCALE</title>
<link rel="stylesheet" href="/static/vendor/katex/katex.min.css"><link rel="stylesheet" href="/static/ui.css">
</head><body data-page="{page}">
<header><a class="brand" href="/runs">SCALE</a><nav><a href="/runs">Runs</a><a href="/diff">Diff</a>
<a href="/evaluations">Evaluations</a></nav><span class="db" title="run database">{db}</span></header>
<main id="main">"""


def shell(page: str, db: str) -> str:
    """The page ``page`` (a key of :data:`PAGES`) before its script fills ``#main``."""
    head = _HEAD.format(title=PAGES[page], page=page, db=escape(masked(db)))
    return (head + '<p class="loading">loading…</p></main>'
            '<script src="/static/vendor/marked/marked.umd.js"></script>'
            '<script src="/static/vendor/katex/katex.min.js"></script>'
            '<script src="/static/ui.js"></script></body></html>')


def error_page(status: int, message: str) -> str:
    """A failure a person reads: the status and one line."""
    head = _HEAD.format(title=str(status), page="error", db="")
    return (head + f'<h1 class="error">{status}</h1><p class="error-line">{escape(message)}</p>'
            '<p><a href="/runs">all runs</a></p></main></body></html>')

"""report.html: report.md rendered to HTML (markdown-it, GitHub-style tables) in one self-contained file:
inline CSS, the plots inlined as data: URIs, a few lines of JS (click a table header to sort).

Below 1000 px (where their columns no longer fit: a phone, a tablet, a narrow window) the Ship section's tables
become cards, one per row, one column of them on a phone and as many as fit on a wider screen: the row's first cell
is the card's title and every other cell is shown under its column's name (each <td> carries it as data-label);
empty cells are left out. The other tables keep their columns and scroll sideways.

The page records its own health for automated checks: <body data-ready="1" data-errors="N"
data-broken-images="N"> once loaded (script errors and images that failed to decode)."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2433}
main{max-width:1200px;margin:0 auto;padding:24px 32px;background:#fff;min-height:100vh}
h1{font-size:26px;margin-top:0}h2{border-bottom:1px solid #dde1e7;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:12px 0;font-size:13px;display:block;overflow-x:auto}
th,td{border:1px solid #dde1e7;padding:4px 8px}th{background:#eef1f5;cursor:pointer;user-select:none}
tr:nth-child(even) td{background:#fafbfc}code{background:#eef1f5;padding:1px 4px;border-radius:3px;font-size:90%}
img{max-width:100%;border:1px solid #dde1e7;margin:4px 0}p:has(img){display:flex;flex-wrap:wrap;gap:8px}
th[data-sort=asc]::after{content:" \\25B2"}th[data-sort=desc]::after{content:" \\25BC"}
td[data-label^="top-1"],td[data-label^="latency"]{min-width:9em}
@media (max-width:999px){
.cards table,.cards thead,.cards tr,.cards td{display:block}
.cards table{border:0;overflow:visible}.cards thead{display:none}
.cards tbody{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,330px),1fr));gap:12px}
.cards tr{display:flex;flex-wrap:wrap;align-content:flex-start;border:1px solid #dde1e7;border-radius:8px;
padding:8px 12px}
.cards td{flex:1 1 100%;min-width:0;border:0;padding:3px 0;background:none!important;text-align:left!important;
font-size:14px}
.cards td:first-child,.cards td[data-label="app links"]{flex:0 1 auto;font-weight:600;font-size:16px;
border-bottom:1px solid #eef1f5;padding-bottom:6px;margin-bottom:4px}
.cards td:first-child,.cards td[data-label="app links"]{flex-grow:1}
.cards td:first-child:has(+ td[data-label="app links"]){flex-grow:0}.cards td[data-label="app links"]{padding-left:.4em}
.cards td[data-label]::before{content:attr(data-label);display:block;font-size:12px;font-weight:600;color:#5a6475}
.cards td[data-label="app links"]::before{content:"\\00B7  ";display:inline;font-size:16px;color:inherit}
.cards td:empty{display:none}.cards code{overflow-wrap:anywhere}
}
@media (max-width:600px){main{padding:16px}h1{font-size:22px}}
"""
CARD_SECTIONS = ("Ship",)  # the h2 sections whose tables turn into cards below 1000 px

HEAD_JS = ("window.__errors=0;"
           "window.addEventListener('error',function(e){if(e instanceof ErrorEvent)window.__errors++;},true);")

TAIL_JS = """
document.querySelectorAll('table').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th,col){
    th.addEventListener('click',function(){
      var body=table.tBodies[0],rows=Array.from(body.rows),asc=th.dataset.sort!=='asc';
      var key=function(r){var t=r.cells[col].textContent.trim(),n=parseFloat(t.replace(/[^0-9.+-]/g,''));
        return isNaN(n)?t:n;};
      rows.sort(function(a,b){var x=key(a),y=key(b);return (x>y?1:x<y?-1:0)*(asc?1:-1);});
      table.querySelectorAll('th').forEach(function(h){delete h.dataset.sort;});
      th.dataset.sort=asc?'asc':'desc';rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
window.addEventListener('load',function(){
  var broken=Array.from(document.images).filter(function(i){return !i.complete||i.naturalWidth===0;}).length;
  document.body.dataset.brokenImages=broken;document.body.dataset.errors=window.__errors;
  document.body.dataset.ready='1';
});
"""


def inline_images(body: str, base: Path) -> str:
    """Replace src="plots/x.png" with a data: URI of the file (a missing file stays a broken link)."""
    def data_uri(match: re.Match) -> str:
        path = base / html.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    return re.sub(r'src="([^"]+\.png)"', data_uri, body)


def _plain(inline: Token) -> str:
    """An inline token's text without its markup (a header cell's name)."""
    return "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline")).strip()


def _cards(tokens: list[Token]) -> list[Token]:
    """The tables of the CARD_SECTIONS in <div class="cards">, and every body cell but the first of a row labelled
    with its column's name (data-label), for the phone layout."""
    out, section, names, column = [], None, [], 0
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            section = tokens[i + 1].content
        cards = section in CARD_SECTIONS
        if token.type == "table_open":
            names = []
            if cards:
                out.append(Token("html_block", "", 0, content='<div class="cards">\n'))
        elif token.type == "th_open":
            names.append(_plain(tokens[i + 1]))
        elif token.type == "tr_open":
            column = 0
        elif token.type == "td_open":
            if column and column < len(names):
                token.attrSet("data-label", names[column])
            column += 1
        out.append(token)
        if token.type == "table_close" and cards:
            out.append(Token("html_block", "", 0, content="</div>\n"))
    return out


def render_html(title: str, markdown: str, base: Path) -> str:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = md.renderer.render(_cards(md.parse(markdown)), md.options, {})
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style><script>{HEAD_JS}</script></head>\n"
            f"<body><main>\n{inline_images(body, base)}\n</main><script>{TAIL_JS}</script></body></html>\n")

"""report.html: report.md rendered to HTML (markdown-it, GitHub-style tables) in one self-contained file:
inline CSS, the plots inlined as data: URIs, a few lines of JS (click a table header to sort).

The page records its own health for automated checks: <body data-ready="1" data-errors="N"
data-broken-images="N"> once loaded (script errors and images that failed to decode)."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2433}
main{max-width:1200px;margin:0 auto;padding:24px 32px;background:#fff;min-height:100vh}
h1{font-size:26px;margin-top:0}h2{border-bottom:1px solid #dde1e7;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:12px 0;font-size:13px;display:block;overflow-x:auto}
th,td{border:1px solid #dde1e7;padding:4px 8px}th{background:#eef1f5;cursor:pointer;user-select:none}
tr:nth-child(even) td{background:#fafbfc}code{background:#eef1f5;padding:1px 4px;border-radius:3px;font-size:90%}
img{max-width:100%;border:1px solid #dde1e7;margin:4px 0}p:has(img){display:flex;flex-wrap:wrap;gap:8px}
th[data-sort=asc]::after{content:" \\25B2"}th[data-sort=desc]::after{content:" \\25BC"}
"""

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


def render_html(title: str, markdown: str, base: Path) -> str:
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style><script>{HEAD_JS}</script></head>\n"
            f"<body><main>\n{inline_images(body, base)}\n</main><script>{TAIL_JS}</script></body></html>\n")

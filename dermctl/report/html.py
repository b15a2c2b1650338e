"""report.html: one self-contained page with Table 2, Figure 1 (inline SVG, else base64 PNG), the flags
and a provenance section listing every result file behind the numbers."""

from __future__ import annotations

import base64
import html
import re

from dermctl.report.collect import Collection
from dermctl.report.tables import Table2

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.missing { color: #999; text-align: center; }
.flag { color: #b00; }
code { font-size: 0.85em; }
"""


def _svg_inline(svg: bytes) -> str:
    text = svg.decode("utf-8")
    # Drop the XML prologue and doctype: they are not allowed inside an HTML body.
    text = re.sub(r"^\s*<\?xml[^>]*>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text, flags=re.DOTALL)
    return text


def render_html(
    table: Table2, collection: Collection, svg: bytes | None = None, png: bytes | None = None
) -> str:
    """The page as text. Figure 1 is embedded (SVG inline preferred) when given."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>dermctl report</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>dermctl report</h1>",
        "<p>Reproducing Gröger et al., <i>Towards Reducing the Need for Annotations in Digital Dermatology "
        "with Self-Supervised Learning</i>. Numbers are test macro-F1 &times; 100 with 95&nbsp;% bootstrap "
        "intervals; &mdash; marks a result that does not exist.</p>",
        "<h2>Table 2</h2>",
        '<table id="table2"><thead><tr><th>evaluation</th><th>init</th>',
    ]
    parts += [f"<th>{e(h)}</th>" for h in table.headers()]
    parts.append("</tr></thead><tbody>")
    for r in table.rows:
        label = e(r.label[: len(r.label) - len(r.marks)]) + (
            f'<span class="flag">{e(r.marks)}</span>' if r.marks else ""
        )
        parts.append(f"<tr><td>{e(r.evaluation)}</td><td>{label}</td>")
        for c in table.columns:
            cell = r.cells[c]
            if cell is None:
                parts.append('<td class="missing">&mdash;</td>')
            else:
                parts.append(f'<td class="num" title="{e(cell.path)}">{e(cell.text())}</td>')
        parts.append("</tr>")
    parts.append("</tbody></table>")
    if table.footnotes:
        parts.append('<h3>Flags</h3><ul class="flags">')
        parts += [f'<li class="flag">{e(n)}</li>' for n in table.footnotes]
        parts.append("</ul>")
    parts.append("<h2>Figure 1</h2>")
    if svg is not None:
        parts.append(f'<figure id="figure1">{_svg_inline(svg)}</figure>')
    elif png is not None:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure id="figure1"><img alt="Figure 1" src="data:image/png;base64,{data}"></figure>')
    else:
        parts.append("<p>No kNN curves among the results.</p>")
    parts += [
        "<h2>Provenance</h2>",
        f"<p>Results read from <code>{e(str(collection.results_dir))}</code>.</p>",
        "<table><thead><tr><th>file</th><th>protocol</th><th>model</th><th>init</th><th>backbone</th>"
        "<th>task</th><th>test split sha256</th><th>run status</th><th>dermctl</th><th>created</th></tr></thead><tbody>",
    ]
    for r in sorted(collection.records, key=lambda r: str(r.path)):
        try:
            shown = r.path.relative_to(collection.results_dir)
        except ValueError:
            shown = r.path
        prov = r.payload.get("provenance") or {}
        version = (prov.get("versions") or {}).get("dermctl", "")
        status = f"{r.run}: {r.run_status}" if r.run_status else ""
        sha = (r.test_split_sha256 or "")[:16]
        parts.append(
            "<tr>"
            + "".join(
                f"<td>{e(str(v))}</td>"
                for v in (
                    shown,
                    r.protocol,
                    r.model,
                    r.init,
                    r.backbone,
                    r.task,
                    sha,
                    status,
                    version,
                    prov.get("created", ""),
                )
            )
            + "</tr>"
        )
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts) + "\n"

"""report.html: one self-contained page, in this order: a verdict per task, Table 2 (with its flags), the
study's published Table 2 beside the user's numbers, Figure 1 (inline SVG, else base64 PNG), per-class F1
and recall, confusion matrices, the skin-type breakdown (table and figure), the method x backbone grid
(Gröger et al. §4's ablation), the data behind each task, and
a provenance section listing every result file behind the numbers. Section ids (`verdict`, `table2`,
`published`, `figure1`, `per-class`, `confusion`, `skin-type`, `ablation`, `data`, `provenance`) are stable for
scripts and tests; wide tables scroll sideways instead of being cut."""

from __future__ import annotations

import base64
import html
import re

from dermctl.report import sections as sec
from dermctl.report.collect import Collection
from dermctl.report.tables import Table2, task_label

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.missing { color: #999; text-align: center; }
.flag { color: #b00; }
.caveat { color: #8a5a00; }
.scroll { overflow-x: auto; max-width: 100%; }
td.diag { font-weight: bold; background: #eef5ee; }
code { font-size: 0.85em; }
"""


def _pct(v: float | None) -> str:
    return "&mdash;" if v is None else f"{100 * v:.1f}"


def _verdict_html(verdicts: list[sec.Verdict]) -> list[str]:
    e = html.escape
    parts = ['<section id="verdict"><h2>Verdict</h2>']
    if not verdicts:
        parts.append(
            "<p>No pretrained model has a result yet: nothing to compare with ImageNet and random init.</p>"
        )
    for v in verdicts:
        parts.append(f"<h3>{e(task_label(v.task))}</h3><ul>")
        parts += [f"<li>{e(line)}</li>" for line in v.lines]
        parts.append("</ul>")
        if v.caveat:
            parts.append(f'<p class="caveat">{e(v.caveat)}</p>')
    parts.append("</section>")
    return parts


def _published_html(rows: list[sec.PublishedRow]) -> list[str]:
    e = html.escape
    parts = ['<section id="published"><h2>Published values beside yours</h2>']
    if not rows:
        parts.append(
            "<p>None of the study's tasks (Fitzpatrick17k, PAD-UFES-20, HAM10000) is among the results.</p>"
        )
        return [*parts, "</section>"]
    tasks = list(rows[0].published) or list(rows[0].yours)
    parts.append(
        "<p>Gröger et al., Table 2 (test macro-F1 &times; 100), labelled <i>published</i>; their numbers come "
        "from a sweep selected on the split it reports, so they are optimistic. <i>yours</i>: your best result "
        "of the same evaluation and initialisation.</p>"
    )
    parts.append('<div class="scroll"><table><thead><tr><th>evaluation</th><th>init</th>')
    for t in tasks:
        parts.append(f"<th>{e(task_label(t))} (published)</th><th>{e(task_label(t))} (yours)</th>")
    parts.append("</tr></thead><tbody>")
    for r in rows:
        label = sec.PROTOCOL_LABELS.get(r.protocol, r.protocol)
        parts.append(f"<tr><td>{e(label)}</td><td>{e(sec.INIT_LABELS.get(r.init, r.init))}</td>")
        for t in tasks:
            pub = r.published.get(t)
            parts.append(f'<td class="num">{"&mdash;" if pub is None else f"{pub:.1f}"}</td>')
            mine = r.yours.get(t)
            parts.append(
                '<td class="missing">&mdash;</td>'
                if mine is None
                else f'<td class="num">{e(mine.text())}</td>'
            )
        parts.append("</tr>")
    parts.append("</tbody></table></div></section>")
    return parts


def _per_class_html(tables: list[sec.ClassTable]) -> list[str]:
    e = html.escape
    parts = ['<section id="per-class"><h2>Per class: F1 / recall (&times; 100)</h2>']
    for t in tables:
        parts.append(
            f'<h3>{e(task_label(t.task))}</h3><div class="scroll"><table><thead><tr><th>evaluation</th><th>model</th>'
        )
        parts += [f"<th>{e(c)}</th>" for c in t.classes]
        parts.append("</tr></thead><tbody>")
        for proto, model, cells in t.rows:
            parts.append(f"<tr><td>{e(proto)}</td><td>{e(model)}</td>")
            parts += [f'<td class="num">{_pct(f1)} / {_pct(rec)}</td>' for f1, rec in cells]
            parts.append("</tr>")
        parts.append("</tbody></table></div>")
    parts.append("</section>")
    return parts


def _confusion_html(matrices: list[sec.Confusion]) -> list[str]:
    e = html.escape
    parts = ['<section id="confusion"><h2>Confusion matrices</h2>']
    if not matrices:
        parts.append("<p>No result stores its test predictions (results written before dermctl 0.2).</p>")
    for m in matrices:
        parts.append(
            f"<details><summary>{e(task_label(m.task))}: {e(m.protocol)}, {e(m.model)}</summary>"
            '<div class="scroll"><table class="confusion"><thead><tr><th>true \\ predicted</th>'
        )
        parts += [f"<th>{e(c)}</th>" for c in m.classes]
        parts.append("</tr></thead><tbody>")
        for i, (c, row) in enumerate(zip(m.classes, m.counts, strict=True)):
            cells = "".join(f'<td class="num{" diag" if j == i else ""}">{v}</td>' for j, v in enumerate(row))
            parts.append(f"<tr><th>{e(c)}</th>{cells}</tr>")
        parts.append("</tbody></table></div></details>")
    parts.append("</section>")
    return parts


def _skin_html(tables: list[sec.SkinTypeTable], figures: dict[str, bytes]) -> list[str]:
    e = html.escape
    parts = ['<section id="skin-type"><h2>By Fitzpatrick skin type (macro-F1 &times; 100)</h2>']
    if not tables:
        parts.append("<p>No task among the results records skin types.</p>")
    for t in tables:
        parts.append(
            f'<h3>{e(task_label(t.task))}</h3><div class="scroll"><table><thead><tr><th>evaluation</th><th>model</th>'
        )
        parts += [f"<th>type {e(s)} (n={t.counts.get(s, '?')})</th>" for s in t.types]
        parts.append("</tr></thead><tbody>")
        for proto, model, cells in t.rows:
            parts.append(f"<tr><td>{e(proto)}</td><td>{e(model)}</td>")
            parts += [f'<td class="num">{_pct(v)}</td>' for v in cells]
            parts.append("</tr>")
        parts.append("</tbody></table></div>")
        if t.task in figures:
            parts.append(f'<figure class="skin-type">{_svg_inline(figures[t.task])}</figure>')
    parts.append("</section>")
    return parts


def _ablation_html(grids: list[sec.AblationGrid]) -> list[str]:
    e = html.escape
    parts = ['<section id="ablation"><h2>Method &times; backbone</h2>']
    if not grids:
        parts.append(
            "<p>No method has results on more than one backbone (examples/ablation.sh runs the grid: is a gain "
            "the method's or the architecture's?).</p>"
        )
    for g in grids:
        label = sec.PROTOCOL_LABELS.get(g.protocol, g.protocol)
        parts.append(
            f'<h3>{e(task_label(g.task))}: {e(label)}, all labels</h3><div class="scroll"><table><thead><tr><th>init</th>'
        )
        parts += [f"<th>{e(b)}</th>" for b in g.backbones]
        parts.append("</tr></thead><tbody>")
        for init, cells in g.rows:
            parts.append(f"<tr><td>{e(init)}</td>")
            for c in cells:
                if c is None:
                    parts.append('<td class="missing">&mdash;</td>')
                else:
                    ci = f" [{100 * c.ci[0]:.1f}, {100 * c.ci[1]:.1f}]" if c.ci else ""
                    parts.append(f'<td class="num">{100 * c.value:.1f}{ci}</td>')
            parts.append("</tr>")
        parts.append("</tbody></table></div>")
    parts.append("</section>")
    return parts


def _data_html(summaries: list[sec.DataSummary]) -> list[str]:
    e = html.escape
    parts = ['<section id="data"><h2>Data: images per class and split</h2>']
    for d in summaries:
        parts.append(f"<h3>{e(task_label(d.task))}</h3>")
        if d.manifests:
            parts.append("<p>Manifest: " + ", ".join(f"<code>{e(m)}</code>" for m in d.manifests) + "</p>")
        if d.counts:
            splits = [s for s in ("train", "val", "test") if s in d.counts]
            parts.append('<div class="scroll"><table><thead><tr><th>class</th>')
            parts += [f"<th>{e(s)}</th>" for s in splits]
            parts.append("</tr></thead><tbody>")
            for c in d.classes:
                parts.append(
                    f"<tr><td>{e(c)}</td>"
                    + "".join(f'<td class="num">{d.counts[s].get(c, 0)}</td>' for s in splits)
                    + "</tr>"
                )
            parts.append("</tbody></table></div>")
        else:
            parts.append(
                "<p>Class counts are not recorded in these results (written before dermctl 0.2).</p>"
            )
        if d.test_images is not None and d.test_images < sec.SMALL_TEST:
            parts.append(
                f'<p class="caveat">Small test split ({d.test_images} images): differences of a few points are noise.</p>'
            )
    parts.append("</section>")
    return parts


def _svg_inline(svg: bytes) -> str:
    text = svg.decode("utf-8")
    # Drop the XML prologue and doctype: they are not allowed inside an HTML body.
    text = re.sub(r"^\s*<\?xml[^>]*>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text, flags=re.DOTALL)
    return text


def render_html(
    table: Table2,
    collection: Collection,
    svg: bytes | None = None,
    png: bytes | None = None,
    skin_figures: dict[str, bytes] | None = None,
) -> str:
    """The page as text. Figure 1 is embedded (SVG inline preferred) when given; `skin_figures` maps a
    task to its skin-type chart (SVG)."""
    e = html.escape
    tasks = table.columns
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>dermctl report</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>dermctl report</h1>",
        "<p>Reproducing Gröger et al., <i>Towards Reducing the Need for Annotations in Digital Dermatology "
        "with Self-Supervised Learning</i>. Numbers are test macro-F1 &times; 100 with 95&nbsp;% bootstrap "
        "intervals; &mdash; marks a result that does not exist.</p>",
        *_verdict_html(sec.verdicts(collection, tasks)),
        "<h2>Table 2</h2>",
        '<div class="scroll"><table id="table2"><thead><tr><th>evaluation</th><th>init</th>',
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
            if cell is None and r.unavailable:
                parts.append(f'<td class="missing" title="{e(r.unavailable)}">unavailable</td>')
            elif cell is None:
                parts.append('<td class="missing">&mdash;</td>')
            else:
                parts.append(f'<td class="num" title="{e(cell.path)}">{e(cell.text())}</td>')
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    if table.footnotes:
        parts.append('<h3>Flags</h3><ul class="flags">')
        parts += [f'<li class="flag">{e(n)}</li>' for n in table.footnotes]
        parts.append("</ul>")
    parts += _published_html(sec.published_comparison(collection, tasks))
    parts.append("<h2>Figure 1</h2>")
    if svg is not None:
        parts.append(f'<figure id="figure1">{_svg_inline(svg)}</figure>')
    elif png is not None:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure id="figure1"><img alt="Figure 1" src="data:image/png;base64,{data}"></figure>')
    else:
        parts.append("<p>No kNN curves among the results.</p>")
    parts += _per_class_html(sec.class_tables(collection, tasks))
    parts += _confusion_html(sec.confusions(collection, tasks))
    parts += _skin_html(sec.skin_type_tables(collection, tasks), skin_figures or {})
    parts += _ablation_html(sec.ablation_grids(collection, tasks))
    parts += _data_html(sec.data_summaries(collection, tasks))
    parts += [
        '<section id="provenance"><h2>Provenance</h2>',
        f"<p>Results read from <code>{e(str(collection.results_dir))}</code>.</p>",
        '<div class="scroll"><table><thead><tr><th>file</th><th>protocol</th><th>model</th><th>init</th><th>backbone</th>'
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
    parts.append("</tbody></table></div></section></body></html>")
    return "\n".join(parts) + "\n"

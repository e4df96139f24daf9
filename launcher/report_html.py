"""The report's HTML: the header, tables and rule sections. Every value on the page is data (rules.json, logs,
class and job names), so every one goes through `text` (escaped, also inside attributes)."""
import html

STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse;"
         "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:90%}"
         ".triggered{color:#b00;font-weight:bold}.passed{color:#070}.not-applicable,.default{color:#777}"
         "figure{margin:0}figure svg{max-width:100%;height:auto}")
NOT_APPLICABLE = "not applicable"
RULE_COLUMNS = ("rule", "status", "statistic", "threshold", "margin", "finding", "recommendation")


def text(value):
    return html.escape(str(value), quote=True)


def number(value):
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value if value is not None else "")


def table(header, rows, table_id=None, row_classes=None):
    """A table of text cells (`header` None: no header row); `row_classes` gives each row a CSS class (or None)."""
    head = "<tr>" + "".join(f"<th>{text(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        (f'<tr class="{text(cls)}">' if cls else "<tr>") + "".join(f"<td>{text(c)}</td>" for c in row) + "</tr>"
        for row, cls in zip(rows, row_classes or [None] * len(rows)))
    attribute = f' id="{text(table_id)}"' if table_id else ""
    return f"<table{attribute}>{head}{body}</table>"


def figure(svg, name):
    """A figure's SVG markup (matplotlib's, which escapes the text it draws) in the page."""
    return f'<figure id="figure-{text(name)}">{svg}</figure>'


def header_section(facts):
    """What the job was, in a few rows: {field: value} (fields without a value are left out)."""
    return "<h2>The job</h2>" + table(None, [(k, v) for k, v in facts.items() if v not in (None, "")], table_id="job")


def hyperparameters_section(rows):
    """rows: (key, value, 'set by the job' | 'default' | 'platform')."""
    return ("<h2>Hyperparameters</h2><p>Every value the job used; grey ones are the defaults.</p>"
            + table(["key", "value", "from"], rows, table_id="hyperparameters",
                    row_classes=["default" if source == "default" else None for _, _, source in rows]))


def rule_cells(result):
    """A rule's row. A rule that cannot apply to this job says so and why, with no figures and no advice."""
    status = str(result.get("status", ""))
    finding = result.get("finding") or (result["findings"][0]["message"] if result.get("findings") else "") \
        or result.get("description", "")
    if status == NOT_APPLICABLE:
        return [result.get("rule", "?"), status, "", "", "", finding, ""]
    return [result.get("rule", "?"), status, *(number(result.get(key)) for key in ("statistic", "threshold", "margin")),
            finding, result.get("recommendation") or ""]


def rules_section(title, intro, results, table_id):
    rows = [rule_cells(r) for r in results]
    classes = [str(r.get("status", "")).replace(" ", "-") for r in results]
    return f"<h2>{text(title)}</h2><p>{text(intro)}</p>" + table(RULE_COLUMNS, rows, table_id, classes)


def page(title, sections):
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{text(title)}</title><style>{STYLE}</style>"
            f"</head><body><h1>{text(title)}</h1>" + "".join(sections) + "</body></html>")

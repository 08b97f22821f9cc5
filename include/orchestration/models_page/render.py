"""The models page as HTML: server-rendered from the reads' dicts, charts as inline SVG, nothing fetched from outside.

The only script is the trigger buttons': each asks the page's check of its form's params (the dataset exists, the
version does: ``prechecks``), then posts them to Airflow's REST API (``POST /api/v2/dags/{dag_id}/dagRuns``), both
with the browser's Airflow session (the UI's ``_token`` cookie, sent by the browser itself: the cookie is HttpOnly and
no script reads it), so Airflow validates the params and checks the user's permission as for its own trigger form;
the answer (the new run, or why the check or Airflow refused) is shown beside the button. Links into the Airflow UI
open in the top window, since Airflow shows the page in a frame.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any

from mlsteps import html_report
from mlsteps.html_report import Band, Series

CSS = """
.cards { display: flex; flex-wrap: wrap; gap: 1rem; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 0.6rem 1rem; min-width: 16rem; max-width: 28rem; }
.card h3 { margin: 0.2rem 0 0.4rem; }
.muted { color: #57606a; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
form.trigger { border: 1px solid #d0d7de; border-radius: 6px; padding: 0.6rem 1rem; margin: 0.5rem 0; }
form.trigger textarea { width: 100%; min-height: 4.5rem; font-family: ui-monospace, monospace; }
form.trigger output { display: block; margin-top: 0.3rem; }
td.reason { max-width: 40rem; }
"""

# Asks the page's check of a trigger form's params, then posts them to Airflow's REST API; shows the run it started,
# or why the check or Airflow refused.
SCRIPT = """
async function detail(response) {
  const body = await response.json().catch(() => ({}));
  if (typeof body.detail === "string") return body.detail;
  const lines = Array.isArray(body.detail) && body.detail.every((item) => typeof item === "string");
  if (lines) return body.detail.join("; ");
  return JSON.stringify(body.detail ?? body);
}
document.querySelectorAll("form.trigger").forEach((form) => {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = form.querySelector("output");
    let conf;
    try {
      conf = JSON.parse(form.elements.conf.value);
    } catch (error) {
      out.textContent = "the params are not valid JSON: " + error.message;
      return;
    }
    out.textContent = "checking...";
    const check = await fetch(form.dataset.check, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({conf: conf}),
    });
    if (!check.ok) {
      out.textContent = "refused before starting (" + check.status + "): " + (await detail(check));
      return;
    }
    out.textContent = "starting...";
    const response = await fetch(form.dataset.endpoint, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({logical_date: null, conf: conf, note: form.dataset.note}),
    });
    if (response.ok) {
      const body = await response.json();
      const link = document.createElement("a");
      link.href = form.dataset.runs + encodeURIComponent(body.dag_run_id);
      link.target = "_top";
      link.textContent = "started " + body.dag_run_id;
      out.replaceChildren(link);
    } else {
      out.textContent = "Airflow refused (" + response.status + "): " + (await detail(response));
    }
  });
});
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _link(href: str | None, text: Any, *, top: bool = False, new: bool = False) -> str:
    if not href:
        return _e(text)
    target = ' target="_top"' if top else ' target="_blank" rel="noopener"' if new else ""
    return f'<a href="{_e(href)}"{target}>{_e(text)}</a>'


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else _e(value)


def _when(value: str | None) -> str:
    """An ISO time as ``2026-11-30 12:39 UTC`` (the full time on hover)."""
    if not value:
        return "&ndash;"
    moment = datetime.fromisoformat(value)
    return f'<time datetime="{_e(value)}" title="{_e(value)}">{moment:%Y-%m-%d %H:%M} UTC</time>'


def _table(header: list[str], rows: list[list[str]], empty: str) -> str:
    """A table of cells that are already HTML (escaped by the caller)."""
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def document(title: str, body: str) -> str:
    """A whole HTML page: the reports' stylesheet plus the page's own, and the trigger buttons' script."""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
        f"<style>{html_report.STYLE}{CSS}</style>\n</head>\n<body>\n<h1>{_e(title)}</h1>\n{body}\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


# --- the index ------------------------------------------------------------------------------------------------


def _serving_text(serving: dict[str, Any]) -> str:
    if serving.get("version") is None:
        return _e(serving.get("note") or "nothing")
    where = serving.get("endpoint") or serving.get("target")
    running = {True: "", False: " (server not running)", None: ""}[serving.get("running")]
    return f"v{serving['version']} on {_e(serving['target'])}: {_e(where)}{running}"


FAILED = ("failed", "rolled_back", "rollback_failed")
WARNINGS = ("rejected", "alert", "alert_only", "pending", "data_quality", "cooldown")


def _badge(outcome: str | None) -> str:
    """A run's outcome, coloured; a run without a summary is still running (or stopped before writing it)."""
    text = outcome or "running"
    css = "failed" if text in FAILED else "warning" if text in WARNINGS else "passed"
    return f'<span class="{css}">{_e(text)}</span>'


def _outcome(run: dict[str, Any] | None) -> str:
    return f"{_badge(run.get('outcome'))} {_when(run.get('at'))}" if run else "&ndash;"


def render_index(cards: list[dict[str, Any]], problems: list[str]) -> str:
    """The index: one line per model, with what serves and the last training run and monitor decision.

    Args:
        cards: ``reads.model_card`` of each model the user may see.
        problems: model configs that do not load, each with its error (their models have no DAGs).
    """
    rows = [
        [_e(card["model"]), f'<span class="failed">cannot read: {_e(card["error"])}</span>', *[""] * 6]
        if "error" in card
        else [
            _link(card["links"]["page"], card["model"]),
            _e(card["task"]),
            f"v{card['champion']}" if card["champion"] else "&ndash;",
            f"v{card['challenger']}" if card["challenger"] else "&ndash;",
            _serving_text(card["serving"]),
            _outcome(card["last_training_run"]),
            _outcome(card["last_monitor_run"]),
            _e((card["last_alert"] or {}).get("reason")) or "&ndash;",
        ]
        for card in cards
    ]
    header = ["model", "task", "champion", "challenger", "serving", "last training", "last monitor check", "last alert"]
    body = _table(header, rows, "no model you may see: a model appears once its config loads (include/config/models)")
    if problems:
        items = "".join(f"<li><code>{_e(problem)}</code></li>" for problem in problems)
        body += f'<h2>Model configs that do not load</h2><ul class="failed">{items}</ul>'
    return document("Models", body)


# --- one model ------------------------------------------------------------------------------------------------


def _version_card(title: str, version: dict[str, Any] | None, primary: str, empty: str) -> str:
    if not version:
        return f'<div class="card"><h3>{_e(title)}</h3><p class="muted">{_e(empty)}</p></div>'
    tags = version["tags"]
    value = version["metrics"].get(primary)
    lines = [
        f"{_e(primary)} {_number(value)} on the holdout" if value is not None else "no holdout metrics on its run",
        f"family {_e(tags.get('family', '?'))}, registered {_when(version['created_at'])}",
        f"trained because: {_e(tags.get('trigger_reason') or tags.get('trigger') or 'unknown')}",
    ]
    if tags.get("promoted_at"):
        forced = " (forced past the gate)" if tags.get("forced") == "true" else ""
        lines.append(f"promoted {_when(tags['promoted_at'])} by {_e(tags.get('promoted_by'))}{forced}")
    links = version["links"]
    lines.append(_link(links["mlflow_run"], f"MLflow run {version['run_id']}", new=True))
    items = "".join(f"<li>{line}</li>" for line in lines)
    return f'<div class="card"><h3>{_e(title)}: v{version["version"]}</h3><ul>{items}</ul></div>'


def _serving_card(serving: dict[str, Any]) -> str:
    lines = [_serving_text(serving)]
    if serving.get("since"):
        lines.append(f"since the deploy of {_when(serving['since'])}")
    if serving.get("deployment"):
        lines.append(f"Deployment {_e(serving['deployment'])}")
    if serving.get("pid"):
        lines.append(f"local server pid {_e(serving['pid'])}")
    if serving.get("note") and serving.get("version") is not None:
        lines.append(f'<span class="warning">{_e(serving["note"])}</span>')
    items = "".join(f"<li>{line}</li>" for line in lines)
    return f'<div class="card"><h3>Serving</h3><ul>{items}</ul></div>'


def _metrics_table(champion: dict[str, Any] | None, challenger: dict[str, Any] | None) -> str:
    columns = [(f"champion v{v['version']}", v["metrics"]) for v in (champion,) if v]
    columns += [(f"challenger v{v['version']}", v["metrics"]) for v in (challenger,) if v]
    names = sorted({name for _, metrics in columns for name in metrics})
    rows = [[_e(name), *(_number(metrics.get(name)) for _, metrics in columns)] for name in names]
    return _table(["holdout metric", *(title for title, _ in columns)], rows, "no registered version yet")


def _actions(actions: list[dict[str, Any]], runs_base: dict[str, str]) -> str:
    forms = []
    for action in actions:
        conf = json.dumps(action["conf"], indent=1)
        forms.append(
            f'<form class="trigger" data-check="{_e(action["check"])}" data-endpoint="{_e(action["endpoint"])}" '
            f'data-runs="{_e(runs_base[action["dag_id"]])}" data-note="{_e("started from the models page")}">'
            f"<strong>{_e(action['label'])}</strong> <code>{_e(action['dag_id'])}</code> "
            f"({_link(action['form'], 'every param in Airflow', top=True)})"
            f'<textarea name="conf" spellcheck="false" aria-label="params of {_e(action["dag_id"])}">{_e(conf)}'
            '</textarea><button type="submit">Trigger</button><output></output></form>'
        )
    return "".join(forms)


def _hours_before(value: str, latest: datetime) -> float:
    return (datetime.fromisoformat(value) - latest).total_seconds() / 3600


def _monitor_charts(windows: list[dict[str, Any]], primary: str) -> str:
    """Drift share and performance (realized, estimated, the holdout's band) per window, as inline SVG."""
    if not windows:
        return '<p class="muted">no monitor window yet</p>'
    latest = datetime.fromisoformat(windows[-1]["window_end"])
    judged = [w for w in windows if w["drift_status"] == "ok" and w["drifted_share"] is not None]
    drift = html_report.xy_chart_svg(
        "Input drift: share of drifted features",
        [
            Series(
                "drifted share",
                [_hours_before(w["window_end"], latest) for w in judged],
                [w["drifted_share"] for w in judged],
                dots=True,
            )
        ],
        x_label="hours before the latest window's end",
        y_label="share of features",
        y_range=(0.0, 1.0),
    )
    realized = [w for w in windows if w["realized"]]
    estimated = [w for w in windows if w["estimated"]]
    banded = realized or estimated
    kind = "realized" if realized else "estimated"
    metric = (banded[0][kind]["metric"] if banded else None) or primary
    x_banded = [_hours_before(w["window_end"], latest) for w in banded]
    performance = html_report.xy_chart_svg(
        f"Performance: {metric}",
        [
            Series(
                "realized",
                [_hours_before(w["window_end"], latest) for w in realized],
                [w["realized"]["value"] for w in realized],
                dots=True,
            ),
            Series(
                "estimated",
                [_hours_before(w["window_end"], latest) for w in estimated],
                [w["estimated"]["value"] for w in estimated],
                dots=True,
            ),
            Series("holdout expectation", x_banded, [w[kind]["expected"] for w in banded]),
        ],
        x_label="hours before the latest window's end",
        y_label=metric,
        band=Band(
            "the holdout's band", x_banded, [w[kind]["lower"] for w in banded], [w[kind]["upper"] for w in banded]
        ),
    )
    return f'<div class="charts">{drift}{performance}</div>'


def _champion_chart(history: list[dict[str, Any]]) -> str:
    """The champion's version over time, as steps at each move of the alias (days before the latest move)."""
    moves = [event for event in reversed(history) if event["alias"] == "champion"]
    if len(moves) < 2:  # one point says nothing the table does not
        return ""
    latest = datetime.fromisoformat(moves[-1]["at"])
    x, y = [], []
    for event in moves:
        day = (datetime.fromisoformat(event["at"]) - latest).total_seconds() / 86400
        if event["from_version"] is not None:
            x.append(day)
            y.append(event["from_version"])
        if event["to_version"] is not None:
            x.append(day)
            y.append(event["to_version"])
    return html_report.xy_chart_svg(
        "Champion version",
        [Series("champion", x, y, dots=True)],
        x_label="days before the latest move",
        y_label="version",
    )


def _history_rows(history: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            _when(event["at"]),
            _e(event["kind"]),
            f"v{event['from_version']}" if event["from_version"] is not None else "none",
            f"v{event['to_version']}" if event["to_version"] is not None else "none",
            _link(event["actor_link"], event["actor"], top=True),
            f'<span class="reason">{_e(event["reason"])}</span>',
        ]
        for event in history
    ]


def _report_cells(links: dict[str, str | None], names: tuple[str, ...]) -> str:
    found = [_link(links[name], name.replace("_", " "), new=True) for name in names if links.get(name)]
    return ", ".join(found) or "&ndash;"


def _training_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for run in runs:
        versus = f" vs v{run['champion_version']} {_number(run['champion_value'])}" if run["champion_version"] else ""
        score = (
            f"{_e(run['primary_metric'])} {_number(run['challenger_value'])}{versus}" if run["primary_metric"] else ""
        )
        gate = {True: "passed", False: "failed", None: "&ndash;"}[run["gate_passed"]]
        rows.append(
            [
                _when(run["at"]),
                _link(run["links"]["airflow_run"], run["run_id"], top=True),
                _e(run["trigger"] or "?"),
                _badge(run["outcome"]) + (f" at {_e(run['failed_task'])}" if run["failed_task"] else ""),
                f"v{run['registered_version']}" if run["registered_version"] else "&ndash;",
                score or "&ndash;",
                f'<span title="{_e("; ".join(run["gate_reasons"]))}">{gate}</span>',
                _link(run["links"].get("mlflow_run"), run["mlflow_run_id"] or "", new=True) or "&ndash;",
                _report_cells(run["links"], ("validation", "evaluation", "evaluation_json")),
                f'<span class="reason">{_e(run["message"] or "")}</span>',
            ]
        )
    return rows


def _deploy_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            _when(run["at"]),
            _link(run["links"]["airflow_run"], run["run_id"], top=True),
            _badge(run["outcome"]),
            f"v{run['version']}" if run["version"] else "&ndash;",
            f"v{run['previous_version']}" if run["previous_version"] else "none",
            _e(run["target"]),
            _e(run["strategy"]),
            f'<span class="reason">{_e(run["reason"] or run["message"] or "")}</span>',
        ]
        for run in runs
    ]


def _monitor_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            _when(run["at"]),
            _link(run["links"]["airflow_run"], run["run_id"], top=True),
            _badge(run["outcome"]),
            _e(", ".join(run["signals"])) or "&ndash;",
            f"v{run['model_version']}" if run["model_version"] else "&ndash;",
            _report_cells(run["links"], ("monitor",)),
            f'<span class="reason">{_e(run["message"] or "")}</span>',
        ]
        for run in runs
    ]


def render_model(overview: dict[str, Any], index_href: str) -> str:
    """One model's page from ``reads.model_overview``.

    Args:
        overview: the model's overview.
        index_href: the index page, linked at the top.
    """
    primary = overview["primary_metric"]
    links = overview["links"]
    dags = overview["dags"]
    runs_base = {dag: links[f"{purpose}_dag"] + "/runs/" for purpose, dag in dags.items()}
    challenger_empty = (
        "none waiting: the last registered version is the champion"
        if overview["challenger_is_champion"]
        else "none registered yet"
    )
    monitor = overview["monitor"]
    alert = monitor["last_alert"]
    dag_links = " &middot; ".join(_link(links[f"{p}_dag"], dag, top=True) for p, dag in dags.items())
    sections = [
        f"<p>{_link(index_href, 'all models')} &middot; {_e(overview['task'])} model, gate on {_e(primary)} "
        f"&middot; DAGs: {dag_links}</p>",
        '<div class="cards">',
        _version_card("Champion", overview["champion"], primary, "none yet: the first run that passes the gate"),
        _version_card("Challenger", overview["challenger"], primary, challenger_empty),
        _serving_card(overview["serving"]),
        "</div>",
        "<h2>Start a run</h2>",
        _actions(overview["actions"], runs_base),
        "<h2>Holdout metrics</h2>",
        _metrics_table(overview["champion"], overview["challenger"]),
        "<h2>Drift and performance</h2>",
        f'<p class="warning">last alert: {_when(alert["window_end"])} {_e(alert["reason"])}</p>' if alert else "",
        _monitor_charts(monitor["windows"], primary),
        "<h2>Champion history</h2>",
        _champion_chart(overview["alias_history"]),
        _table(
            ["when", "move", "from", "to", "by", "why"],
            _history_rows(overview["alias_history"]),
            "champion never moved",
        ),
        "<h2>Deploys and rollbacks</h2>",
        _table(
            ["when", "run", "outcome", "version", "before", "target", "strategy", "why"],
            _deploy_rows(overview["deploys"]),
            "no deploy yet",
        ),
        "<h2>Training runs</h2>",
        _table(
            ["when", "run", "trigger", "outcome", "version", "holdout", "gate", "MLflow run", "reports", "message"],
            _training_rows(overview["training_runs"]),
            "no training run yet",
        ),
        f"<h2>Monitor checks (newest {len(monitor['runs'])} of {monitor['runs_total']})</h2>",
        _table(
            ["when", "run", "decision", "signals", "version", "report", "why"],
            _monitor_rows(monitor["runs"]),
            "no monitor check yet",
        ),
    ]
    return document(overview["model"], "\n".join(section for section in sections if section))

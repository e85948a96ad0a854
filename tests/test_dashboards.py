"""The Grafana dashboard and the Prometheus alert rules in config/: they parse, they are well formed,
and every metric name their PromQL uses is one a real worker exports (scraped from a prefork
worker after runs that complete, compensate, retry, expire, get resumed and get parked, with the
SQL archive on). ``promtool check rules`` runs too when promtool is on PATH."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga import Settings
from saga.errors import SagaTimeout
from saga.testing import RedisServer, free_port, start_worker_process, stop_process_group, wait_for, worker_env
from tests.helpers import Samples, scrape

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "config" / "prometheus"
GRAFANA = ROOT / "config" / "grafana"
RULES = PROMETHEUS / "saga-alerts.yml"
DASHBOARD = GRAFANA / "dashboards" / "saga.json"

# --- PromQL: the metric names an expression reads ------------------------------------------------

#: Aggregations, operators and modifiers: words that are not metric names.
KEYWORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "atan2", "inf", "nan",
}  # fmt: skip
#: Keywords followed by a parenthesised list of label names.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
#: PromQL's functions (a name followed by "(" must be one).
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time",
    "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "double_exponential_smoothing",
    "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time",
    "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort",
    "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
}  # fmt: skip
#: Series Prometheus makes itself for every target, not exported by the workers.
SYNTHETIC = {"up"}

_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      |(?P<variable>\$\{[^}]*\}|\$\w+)
      |(?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
      |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<open>[({\[])
      |(?P<close>[)}\]])
      |(?P<space>\s+)
      |(?P<other>[-+*/%^=!<>,@~])""",
    re.VERBOSE,
)
_PAIRS = {"(": ")", "{": "}", "[": "]"}


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) of each token of a PromQL expression (Grafana variables as one token),
    without whitespace; ValueError on a character PromQL has no use for."""
    found: list[tuple[str, str]] = []
    at = 0
    while at < len(expr):
        m = _TOKEN.match(expr, at)
        if m is None or m.lastgroup is None:
            raise ValueError(f"unexpected {expr[at : at + 10]!r} at {at} in {expr!r}")
        if m.lastgroup != "space":
            found.append((m.lastgroup, m.group()))
        at = m.end()
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: label matchers ``{...}``, ranges ``[5m]``,
    label lists after ``by``/``without``/``on``/``ignoring``/``group_*``, function names,
    keywords, numbers, durations and strings are skipped. ValueError on an unknown function or
    unbalanced brackets."""
    toks = tokens(expr)
    names: set[str] = set()
    stack: list[str] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        if kind == "open":
            stack.append(text)
            if text in "{[":  # label matchers and ranges name no metric: skip to the close
                i = _skip(toks, i)
                stack.pop()
                continue
        elif kind == "close":
            if not stack or _PAIRS[stack.pop()] != text:
                raise ValueError(f"unbalanced {text!r} in {expr!r}")
        elif kind == "name":
            following = toks[i + 1] if i + 1 < len(toks) else ("", "")
            if text in LABEL_LISTS and following == ("open", "("):
                i = _skip(toks, i + 1)
                continue
            if text in KEYWORDS:
                pass
            elif following == ("open", "("):
                if text not in FUNCTIONS:
                    raise ValueError(f"{text}() is not a PromQL function (in {expr!r})")
            else:
                names.add(text)
        i += 1
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r} in {expr!r}")
    return names


def _skip(toks: list[tuple[str, str]], i: int) -> int:
    """The index after the bracket that closes the one at ``i``."""
    depth = 0
    for j in range(i, len(toks)):
        kind, _ = toks[j]
        depth += 1 if kind == "open" else -1 if kind == "close" else 0
        if depth == 0:
            return j + 1
    raise ValueError(f"unclosed {toks[i][1]!r}")


def test_metric_names_skip_everything_that_is_not_a_metric() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, saga) (rate(a_bucket{saga=~"$saga", x="}[b]"}[$__rate_interval]'
        " offset 1h30m))) / on (saga) group_left (step) max without (instance) (b_total) > 0.5e3 and c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names('absent(up{job="saga-workers"})') == {"up"}
    with pytest.raises(ValueError, match="not a PromQL function"):
        metric_names("rat(saga_resumes_total[5m])")
    with pytest.raises(ValueError, match="unclosed"):
        metric_names("sum(rate(x[5m])")


# --- the files ---------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    assert set(data) == {"groups"}, "a rules file holds only groups"
    found: list[dict[str, Any]] = []
    for group in data["groups"]:
        assert set(group) <= {"name", "rules", "interval", "limit"} and isinstance(group["name"], str)
        found += group["rules"]
    return found


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def variable_metrics() -> set[str]:
    """The metrics the dashboard's query variables read (Grafana's ``label_values(metric, label)``)."""
    found = set()
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert m is not None, f"variable {var['name']}: {query!r}"
            found |= metric_names(m.group(1))
    return found


def used_names() -> set[str]:
    """Every metric name the rules and the dashboard read."""
    exprs = [r["expr"] for r in rules()] + dashboard_exprs()
    return set().union(*(metric_names(e) for e in exprs)) | variable_metrics()


DURATION = re.compile(r"^(\d+(ms|[smhdwy]))+$")


def test_every_alert_rule_is_well_formed() -> None:
    names = []
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
        names.append(rule["alert"])
        assert re.fullmatch(r"Saga[A-Z][A-Za-z]+", rule["alert"])
        assert isinstance(rule["expr"], str) and metric_names(rule["expr"])
        assert DURATION.match(str(rule.get("for", "0s")))
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])
    assert len(names) == len(set(names)), "alert names are unique"


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    by_metric = {name: rule["alert"] for rule in rules() for name in metric_names(rule["expr"])}
    for metric in ("saga_dead_letters", "saga_stuck_run_seconds", "saga_archive_lag_seconds", "saga_resumes_total"):
        assert metric in by_metric, f"no alert on {metric}"
    stuck = next(r for r in rules() if r["alert"] == "SagaRunsStuck")
    assert "> 600" in stuck["expr"]  # the README's "stuck longer than 10 minutes"


def test_the_dashboard_is_a_grafana_dashboard_over_a_datasource_variable() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["saga"]["includeAll"] and variables["saga"]["multi"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
    for p in panels():
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"] and p["description"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
    # the variables a panel uses exist (Grafana's own start with $__)
    used = {v for e in dashboard_exprs() for v in re.findall(r"\$\{?(\w+)", e) if not v.startswith("__")}
    assert used <= set(variables)


def test_the_dashboard_shows_what_the_issue_lists() -> None:
    shown = set().union(*(metric_names(e) for e in dashboard_exprs()))
    wanted = {
        "runs started": "saga_runs_started_total",
        "runs finished by status": "saga_runs_finished_total",
        "step latency percentiles": "saga_step_duration_seconds_bucket",
        "retries": "saga_step_retries_total",
        "resumes": "saga_resumes_total",
        "parked runs": "saga_parked_runs",
        "dead-letter depth": "saga_dead_letters",
        "archive lag": "saga_archive_lag_seconds",
        "stuck runs": "saga_stuck_run_seconds",
    }
    assert not {item for item, metric in wanted.items() if metric not in shown}
    assert any("histogram_quantile(0.99" in e for e in dashboard_exprs())


def test_prometheus_scrapes_the_workers_port_with_credentials_from_a_file() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for path in config["rule_files"]:
        assert (PROMETHEUS / path).is_file(), path
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "saga-workers"]
    ports = {sd["port"] for sd in job.get("dns_sd_configs", [])}
    ports |= {int(t.rsplit(":", 1)[1]) for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert ports == {Settings.model_fields["metrics_port"].default}
    auth = job["basic_auth"]
    assert set(auth) == {"username", "password_file"}, "the password comes from a file, never written here"
    # the rules and the dashboard name the job this config scrapes
    assert 'job="saga-workers"' in RULES.read_text() and 'job=\\"saga-workers\\"' in DASHBOARD.read_text()


def test_grafana_provisioning_loads_the_dashboard_from_prometheus() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "saga.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def alert(name: str, at: str, summary: str, **labels: str) -> dict[str, Any]:
    """A promtool expectation: ``name`` fires at ``at`` with ``labels`` and these annotations."""
    [rule] = [r for r in rules() if r["alert"] == name]
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [
            {
                "exp_labels": {"severity": rule["labels"]["severity"], **labels},
                "exp_annotations": {"summary": summary, "description": rule["annotations"]["description"]},
            }
        ],
    }


def quiet(name: str, at: str) -> dict[str, Any]:
    """A promtool expectation: ``name`` does not fire at ``at``."""
    return {"eval_time": at, "alertname": name, "exp_alerts": []}


#: When each alert fires and when it must not, as promtool unit tests (1 sample a minute).
ALERT_CASES: list[dict[str, Any]] = [
    {  # dead letters from minute 5: firing only once they waited 15 minutes; no target scraped at all
        "input_series": [{"series": 'saga_dead_letters{instance="w1"}', "values": "0x4 1x30"}],
        "alert_rule_test": [
            quiet("SagaDeadLettersWaiting", "10m"),
            alert("SagaDeadLettersWaiting", "25m", "dead-letter entries waiting for an operator: 1"),
            alert("SagaNoWorkers", "15m", "Prometheus finds no saga worker to scrape", job="saga-workers"),
        ],
    },
    {  # a run overdue from minute 4, by a minute more each minute: over 10 minutes at 15m, 2m pending
        "input_series": [
            {"series": 'saga_stuck_run_seconds{instance="w1"}', "values": "0x4 60+60x30"},
            {"series": 'saga_archive_lag_seconds{instance="w1", bucket="3"}', "values": "0x4 60+60x30"},
            {"series": 'saga_parked_runs{instance="w1"}', "values": "1x40"},
            {"series": 'up{job="saga-workers", instance="w1"}', "values": "1x40"},
        ],
        "alert_rule_test": [
            quiet("SagaRunsStuck", "15m"),
            alert("SagaRunsStuck", "18m", "a run has gone 14m 0s past its progress deadline with nothing moving it"),
            quiet("SagaArchiveLagging", "20m"),
            alert("SagaArchiveLagging", "26m", "the SQL archive is 22m 0s behind"),
            quiet("SagaRunsParked", "20m"),
            alert("SagaRunsParked", "35m", "runs parked for over 30 minutes: 1"),
            quiet("SagaNoWorkers", "15m"),
            quiet("SagaWorkersDown", "15m"),
        ],
    },
    {  # resumes at 20% of step executions, sustained: firing after 10 minutes
        "input_series": [
            {"series": 'saga_resumes_total{saga="order", reason="lease expired", instance="w1"}', "values": "0+20x40"},
            {
                "series": 'saga_step_duration_seconds_count{saga="order", step="a", outcome="succeeded", '
                'direction="forward", instance="w1"}',
                "values": "0+100x40",
            },
        ],
        "alert_rule_test": [
            alert("SagaResumesSpiking", "20m", "saga order: 20% of step executions are resumes", saga="order"),
        ],
    },
    {  # one burst of 50 resumes (a deploy), and a trickle of 1 a minute: neither fires
        "input_series": [
            {
                "series": 'saga_resumes_total{saga="burst", reason="lease expired", instance="w1"}',
                "values": "0x10 50x30",
            },
            {"series": 'saga_step_duration_seconds_count{saga="burst", instance="w1"}', "values": "0+100x40"},
            {"series": 'saga_resumes_total{saga="few", reason="lease expired", instance="w1"}', "values": "0+1x40"},
            {"series": 'saga_step_duration_seconds_count{saga="few", instance="w1"}', "values": "0+2x40"},
        ],
        "alert_rule_test": [quiet("SagaResumesSpiking", at) for at in ("14m", "17m", "20m", "30m")],
    },
    {  # a malformed message at minute 6; a worker whose scrape fails from minute 6
        "input_series": [
            {"series": 'saga_poison_messages_total{task="saga.order.x", instance="w1"}', "values": "0x5 1x30"},
            {"series": 'up{job="saga-workers", instance="w1"}', "values": "1x5 0x30"},
        ],
        "alert_rule_test": [
            alert(
                "SagaPoisonMessages", "10m", "malformed messages for saga.order.x were rejected", task="saga.order.x"
            ),
            quiet("SagaPoisonMessages", "30m"),
            quiet("SagaWorkersDown", "9m"),
            alert(
                "SagaWorkersDown",
                "12m",
                "the metrics of saga worker w1 do not answer",
                instance="w1",
                job="saga-workers",
            ),
        ],
    },
]


def test_the_alert_cases_cover_every_rule() -> None:
    tested = {t["alertname"] for case in ALERT_CASES for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == {r["alert"] for r in rules()}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_config_and_the_alerts_fire_as_documented(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None

    def check(*args: str) -> None:
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    check("check", "rules", str(RULES))
    check("check", "config", str(PROMETHEUS / "prometheus.yml"))
    cases = tmp_path / "saga-alerts.test.yml"
    tests = [{"interval": "1m", **case} for case in ALERT_CASES]
    cases.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    check("test", "rules", str(cases))


# --- against a real worker -----------------------------------------------------------------------

#: Runs a worker completes, compensates after a retry (a dead letter), expires at its deadline,
#: plus a malformed message; run in a process of its own with the worker's settings.
START_RUNS = """
import json
from workers.app import app
from workers.orders import order
ok = order.start({"order_id": 1})
bad = order.start({"order_id": 2, "fail_at": "create_shipment", "flaky": {"reserve_inventory": 1}})
late = order.start({"order_id": 3, "sleep": {"reserve_inventory": 3}}, deadline=0.5)
app.send_task("saga.order.reserve_inventory", args=[42])
print(json.dumps([order.wait(run, timeout=60).status.value for run in (ok, bad, late)]))
"""

#: With SAGA_STEP_QUEUE naming a queue no worker reads: a run of order whose first step never
#: starts (the worker's watchdog resumes it), and a run of a saga no worker defines (parked).
START_STRANDED = """
from saga import Saga
from workers.app import app
from workers.orders import order
orphan = Saga("dashboards_orphan", app=app)
@orphan.step
def only(payload, ctx):
    return {}
order.start({"order_id": 4})
orphan.start({})
"""


def run_script(script: str, settings: Settings) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], env=worker_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def worker_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    folder = tmp_path_factory.mktemp("dashboards")
    with RedisServer() as redis:
        mine = Settings(
            redis_url=redis.url,
            metrics_port=free_port(),
            archive_url=f"sqlite:///{folder / 'archive.db'}",
            lease_seconds=2,
            dispatch_timeout=1,
        )
        done = subprocess.run(
            [sys.executable, "-m", "saga", "db", "upgrade"], env=worker_env(mine), cwd=ROOT, capture_output=True
        )
        assert done.returncode == 0, done.stderr
        env = worker_env(mine)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        proc = start_worker_process("workers", env, name=f"dashboards{mine.metrics_port}", log=folder / "worker.log")
        try:
            yield f"http://127.0.0.1:{mine.metrics_port}/metrics", mine
        finally:
            stop_process_group(proc)


def exported(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def test_every_metric_the_rules_and_the_dashboard_read_is_exported_by_a_worker(
    worker_metrics: tuple[str, Settings],
) -> None:
    url, settings = worker_metrics
    wait_for(lambda: scrape(url), timeout=60, what="the worker's metrics endpoint")
    statuses = json.loads(run_script(START_RUNS, settings))
    assert statuses == ["completed", "compensated", "compensated"]
    run_script(START_STRANDED, settings.replace(step_queue="nowhere"))

    needed = used_names() - SYNTHETIC
    last: Samples = {}

    def all_exported() -> bool:
        nonlocal last
        last = scrape(url)
        return needed <= exported(last)

    try:
        wait_for(all_exported, timeout=60, what="every metric the config reads")
    except SagaTimeout:
        pytest.fail(f"the config reads metrics no worker exports: {sorted(needed - exported(last))}")
    # the scenarios behind them happened in the worker
    resumes = {dict(labels)["reason"] for name, labels in last if name == "saga_resumes_total"}
    assert "message not begun within SAGA_DISPATCH_TIMEOUT" in resumes  # a resume's label is its reason's head
    assert last[("saga_parked_runs", ())] >= 1
    assert last[("saga_dead_letters", ())] >= 1
    assert last[("saga_runs_expired_total", (("saga", "order"),))] >= 1
    assert last[("saga_stuck_run_seconds", ())] >= 0
    assert {dict(labels)["bucket"] for name, labels in last if name == "saga_archive_lag_seconds"}

"""The operations the chart ships, checked on its render: the prober, the alerts, the dashboard and the values schema.

scripts/helm-check.py calls check_operations(chart_dir, objects, environment) for every environment it renders
(`objects` is its render(): {(kind, name): manifest}); each finding is one line. What is checked:

- every metric an alert or a dashboard panel reads exists: a `quarry_*` name where the Rust sources write it (a
  metrics macro, the gRPC layer's names, the prober's text format), any other name in EXTERNAL_METRICS with the
  exporter that provides it; `_bucket`, `_sum` and `_count` only of a histogram; the labels a selector or an
  aggregation names are ones those metrics carry, and the values selected on (`rpc`, `endpoint`, `component`,
  `code`, `result`, `perspective`) ones the code, the protos and the configuration produce — a misspelt name or
  value selects nothing, and an alert on nothing never fires;
- every alert has `for`, a severity, a summary, a description and a runbook_url naming a heading of
  docs/environments.md whose section mentions the alert; the probe and CRL alerts' windows fit the schedule and the
  crl-updater's configuration;
- the CronJob and the `helm test` Pod run one pod spec, the image by digest, and the probe's arguments from the
  environment's values (its URL and name from wfe.externalHost); the CronJob never overlaps itself and ends a run
  before the next is due; --min-scts is the publisher's min_scts and --crl-wait-secs outlasts the crl-updater's
  period; the prober's NetworkPolicy admits nothing in;
- the monitoring.coreos.com objects, unknown to kubernetes-validate, validate against CRD_SCHEMAS below: kept by
  hand for the fields the chart uses, every object closed (an unknown field is an error, as with
  `kubernetes-validate --strict`), so a field the chart starts using must be added there;
- values.schema.json is draft 7, types every key of values.yaml, accepts the real values (values.yaml, the
  environment's file and a digest) and rejects an image tag, a tag for a digest, an unknown environment, a lone
  replica, a scaled crl-updater, another schedule form and a misspelt key — with jsonschema, and through Helm's own
  render-time validation (which also proves monitoring.enabled=false drops the operator's kinds).
"""

import copy
import difflib
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import yaml

from chart_common import merge

# Metrics that Quarry does not export, and who does; an alert on one of these relies on that exporter running.
EXTERNAL_METRICS = {
    "up": "Prometheus (every scrape target)",
    "push_time_seconds": "the Pushgateway (per pushed group)",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
}
# Labels every scraped series has besides its own: Prometheus' and the PodMonitor's target labels, the prober's
# Pushgateway grouping key, and the histogram buckets'.
TARGET_LABELS = {"namespace", "pod", "container", "instance", "job", "component", "environment", "le"}
EXTERNAL_LABELS = {
    "up": set(),
    "push_time_seconds": set(),
    "kube_pod_container_status_restarts_total": {"uid"},
}
# tonic::Code's Debug names, which the gRPC layer writes as `code`.
GRPC_CODES = {
    "Ok", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
    "Internal", "Unavailable", "DataLoss", "Unauthenticated",
}
SEVERITIES = {"critical", "warning", "info"}
# PromQL's aggregation operators, which take `by (…)` between their name and their parenthesis.
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile", "limitk", "limit_ratio"}
PROBE_FLAGS = {
    "--environment", "--image-digest", "--account-key", "--dns-hook", "--name", "--report-json", "--push-gateway",
    "--crl-wait-secs", "--min-scts",
}
# The objects whose values may differ between environments only by each environment's own values.
ENVIRONMENT_SCOPED = {
    ("CronJob", "quarry-prober"),
    ("Pod", "quarry-prober-test"),
    ("PodMonitor", "quarry"),
    ("PrometheusRule", "quarry"),
}
CRD_API_VERSION = "monitoring.coreos.com/v1"

_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string", "minLength": 1},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {
            "enum": [
                "replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap",
                "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase",
                "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual",
            ]
        },
        "modulus": {"type": "integer", "minimum": 0},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "separator": {"type": "string"},
        "sourceLabels": {"type": "array", "items": _LABEL_NAME},
        "targetLabel": {"type": "string"},
    },
}
CRD_SCHEMAS = {
    "PodMonitor": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": CRD_API_VERSION},
            "kind": {"const": "PodMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "podMetricsEndpoints"],
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "jobLabel": {"type": "string"},
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "sampleLimit": {"type": "integer", "minimum": 0},
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string", "minLength": 1},
                                "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "honorLabels": {"type": "boolean"},
                                "relabelings": {"type": "array", "items": _RELABEL},
                                "metricRelabelings": {"type": "array", "items": _RELABEL},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": CRD_API_VERSION},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "limit": {"type": "integer"},
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                        "properties": {
                                            "alert": {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_]*$"},
                                            "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": _STRING_MAP,
                                            "annotations": _STRING_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def repo_root(chart_dir):
    """The repository holding the chart: the first directory above it with the workspace's Cargo.toml."""
    for directory in [chart_dir, *chart_dir.parents]:
        if (directory / "Cargo.toml").is_file() and (directory / "deploy").is_dir():
            return directory
    raise FileNotFoundError(f"no repository (Cargo.toml beside deploy/) above {chart_dir}")


def rust_metrics(root):
    """{name: (kind or None, labels or None)} of every `quarry_*` metric the Rust sources write.

    A name counts where a string literal begins with it (`counter!("quarry_x", …)`, the gRPC layer's pair of names,
    the prober's `quarry_probe_…{{step=…}}` lines). The kind is the macro's or the `# TYPE` line's, else a counter
    for a `_total` name; the labels are the macro's `"label" =>` keys or the text format's `{label=`, unknown (None)
    where the name is passed through a variable."""
    metrics = {}
    literal = re.compile(r'"(?:# (?:HELP|TYPE) )?(quarry_[a-z0-9_]*[a-z0-9])\b')
    macro = re.compile(r'\b(counter|gauge|histogram)!\(\s*(?:"(quarry_[a-z0-9_]+)"|([a-z_][a-z0-9_]*)\s*,)')
    type_line = re.compile(r"# TYPE (quarry_[a-z0-9_]+) (counter|gauge|histogram)")
    sample_line = re.compile(r'"(quarry_[a-z0-9_]+)(\{\{.*?\}\})? \{\}')

    def labels_of(statement):
        return set(re.findall(r'"([a-z_][a-z0-9_]*)"\s*=>', statement))

    for path in sorted(root.glob("*/src/**/*.rs")):
        text = path.read_text(errors="replace")
        found = {match.group(1) for match in literal.finditer(text)}
        # Macros naming their metric through a variable (the gRPC layer's server/client pair): the file's names
        # that no macro spells out take the kind and labels of its one such macro of their kind.
        by_variable = {}
        for match in macro.finditer(text):
            kind, name, variable = match.groups()
            labels = labels_of(text[match.end(): text.find(";", match.end())])
            if name:
                entry = metrics.setdefault(name, [None, None])
                entry[0] = kind
                entry[1] = (entry[1] or set()) | labels
            else:
                by_variable.setdefault(kind, []).append(labels)
        for name, kind in type_line.findall(text):
            metrics.setdefault(name, [None, None])[0] = kind
        for name, braces in sample_line.findall(text):
            entry = metrics.setdefault(name, [None, None])
            entry[1] = (entry[1] or set()) | set(re.findall(r"\{\{([a-z_][a-z0-9_]*)=", braces))
        for name in found:
            entry = metrics.setdefault(name, [None, None])
            if entry[0] is None and entry[1] is None:
                guess = "counter" if name.endswith("_total") else "histogram" if name.endswith("_seconds") else None
                if guess and len(by_variable.get(guess, [])) == 1:
                    entry[0], entry[1] = guess, by_variable[guess][0]
    for name, entry in metrics.items():
        if entry[0] is None and name.endswith("_total"):
            entry[0] = "counter"
    return {name: tuple(entry) for name, entry in metrics.items()}


def label_values(root, chart_dir, environment, values):
    """The values the code, the protos, the configuration and the chart give the labels alerts select on."""
    rpcs = set()
    for proto in sorted((root / "proto").rglob("*.proto")):
        text = proto.read_text()
        package = re.search(r"^package\s+([\w.]+);", text, re.M)
        for service, body in re.findall(r"^service\s+(\w+)\s*\{(.*?)^\}", text, re.M | re.S):
            for method in re.findall(r"^\s*rpc\s+(\w+)\s*\(", body, re.M):
                rpcs.add(f"/{package.group(1) if package else ''}.{service}/{method}")
    # The wfe's route table (`endpoint_of`), wherever under its handlers it lives.
    handlers = "".join(path.read_text() for path in sorted((root / "wfe" / "src" / "handlers").rglob("*.rs")))
    endpoints = set(re.findall(r'\("/[^"]*",\s*"([a-z-]+)"\)', handlers)) | {"other"}
    if len(endpoints) < 10:
        raise RuntimeError(f"found only {sorted(endpoints)} as the wfe's endpoint labels: where is its route table?")
    errors = (root / "core" / "src" / "error.rs").read_text()
    results = set(re.findall(r'\w+\s*=>\s*"([a-zA-Z]+)"', errors)) | {"valid"}
    # And every literal a metric gives its `result` label where it is recorded (CT submissions, CRL shard updates).
    for path in sorted(root.glob("*/src/**/*.rs")):
        results |= set(re.findall(r'"result"\s*=>\s*"([A-Za-z_]+)"', path.read_text()))
    # The Pushgateway job the prober pushes under, where its sources name it.
    jobs = set()
    for path in sorted((root / "quarry" / "src").glob("probe*/**/*.rs")) + [root / "quarry" / "src" / "probe.rs"]:
        if path.is_file():
            jobs |= set(re.findall(r'PUSH_JOB\s*:\s*&str\s*=\s*"([^"]+)"', path.read_text()))
    perspectives = set()
    for path in (chart_dir / "env" / "base").glob("va*.toml"):
        perspectives |= set(re.findall(r'^perspective\s*=\s*"([^"]+)"', path.read_text(), re.M))
    return {
        "rpc": rpcs,
        "endpoint": endpoints,
        "result": results,
        "perspective": perspectives,
        "code": GRPC_CODES,
        "component": set(values["services"]),
        "environment": {environment},
        "namespace": {values["namespace"]},
        **({"job": jobs} if jobs else {}),
    }


def _strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def promql_selectors(expr):
    """[(metric name, [(label, op, value)])] of every series selector in a PromQL expression."""
    selectors = []
    # Durations, ranges and label lists hold no metric names; strings and matchers are read before they go.
    pattern = re.compile(
        r'"(?:[^"\\]|\\.)*"'  # a string (an aggregation parameter, a label_replace argument)
        r"|\[[^\]]*\]"  # a range or a subquery
        r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
        r"|(?P<name>(?<![\w$.:])[a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?P<matchers>\{(?:[^}\"]|\"(?:[^\"\\]|\\.)*\")*\})"
        r"|(?P<bare>(?<![\w$.:])[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<call>\s*\()?"
    )
    keywords = {"and", "or", "unless", "offset", "bool", "inf", "nan", "by", "without", "on", "ignoring",
                "group_left", "group_right"} | AGGREGATIONS
    for match in pattern.finditer(expr):
        if match.group("matchers") is not None:
            matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', match.group("matchers"))
            name = match.group("name")
            if name is None:
                name = next((value for label, op, value in matchers if label == "__name__" and op == "="), None)
            selectors.append((name, [m for m in matchers if m[0] != "__name__"]))
        elif match.group("bare") and not match.group("call") and match.group("bare").lower() not in keywords:
            selectors.append((match.group("bare"), []))
    return selectors


def promql_grouping_labels(expr):
    """Every label an expression aggregates or matches by: `by`, `without`, `on`, `ignoring` and `group_…` lists."""
    labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", _strip_strings(expr)):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels


def _suggest(value, known):
    close = difflib.get_close_matches(value, sorted(known), n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else f" (known: {', '.join(sorted(known)[:12])}…)"


def check_expression(where, expr, metrics, values_by_label):
    """Findings for one PromQL expression: unknown metrics, labels the metrics lack, values nothing produces."""
    findings = []
    known_labels = set(TARGET_LABELS)
    labels_known = True
    for name, matchers in promql_selectors(expr):
        if name is None:
            findings.append(f"{where}: a selector without a metric name: {matchers}")
            continue
        base, suffix = name, None
        if name not in metrics and name not in EXTERNAL_METRICS:
            for ending in ("_bucket", "_sum", "_count"):
                if name.endswith(ending) and name.removesuffix(ending) in metrics:
                    base, suffix = name.removesuffix(ending), ending
        if base in EXTERNAL_METRICS:
            labels = EXTERNAL_LABELS.get(base)
        elif base in metrics:
            kind, labels = metrics[base]
            if suffix and kind not in ("histogram", None):
                findings.append(f"{where}: {name}: {base} is a {kind}, not a histogram")
        else:
            findings.append(f"{where}: the metric {name} exists neither in the Rust sources nor in EXTERNAL_METRICS"
                            f"{_suggest(name, set(metrics) | set(EXTERNAL_METRICS))}")
            continue
        if labels is None:
            labels_known = False
            series_labels = None
        else:
            series_labels = labels | TARGET_LABELS
            known_labels |= labels
        for label, op, value in matchers:
            if series_labels is not None and label not in series_labels:
                findings.append(f"{where}: {name} has no label {label} (it has {sorted(series_labels)})")
            allowed = values_by_label.get(label)
            if allowed is None or "$" in value or value == "":
                continue
            plain = op in ("=~", "!~") and re.fullmatch(r"[\w-]+(\|[\w-]+)*", value)
            alternatives = value.split("|") if plain else None
            if op in ("=", "!="):
                if value not in allowed:
                    findings.append(f"{where}: {label}{op}\"{value}\": no such {label}{_suggest(value, allowed)}")
            elif alternatives:
                for alternative in alternatives:
                    if alternative not in allowed:
                        findings.append(f"{where}: {label}{op}\"{value}\": no such {label} {alternative!r}"
                                        f"{_suggest(alternative, allowed)}")
            elif not any(re.fullmatch(value, candidate) for candidate in allowed):
                findings.append(f"{where}: {label}{op}\"{value}\" matches no {label}{_suggest(value, allowed)}")
    if labels_known:
        for label in promql_grouping_labels(expr) - known_labels:
            findings.append(f"{where}: groups by {label}, which none of its metrics carries")
    return findings


def parse_duration(text):
    """Seconds in a Prometheus duration (`16m`, `1h30m`)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(int(n) * units[u] for n, u in parts)


def headings(markdown):
    """{GitHub anchor: the section's text up to the next heading of the same or a higher level}."""
    lines = markdown.splitlines()
    # A `# comment` in a code block is no heading.
    levels, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^(#+)\s+(.*)$", line)
        levels.append((len(heading.group(1)), heading.group(2)) if heading else None)
    sections = {}
    for index, heading in enumerate(levels):
        if heading is None:
            continue
        level, title = heading
        anchor = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        end = next((j for j in range(index + 1, len(lines)) if levels[j] and levels[j][0] <= level), len(lines))
        sections[anchor] = "\n".join(lines[index:end])
    return sections


def environment_values(chart_dir, environment):
    """values.yaml with the environment's values file over it."""
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    path = chart_dir / f"values-{environment}.yaml"
    return merge(defaults, yaml.safe_load(path.read_text()) if path.exists() else {})


def service_config(chart_dir, environment, service):
    """A service's base configuration with the environment's overlay over it, as the service merges them."""
    base = tomllib.loads((chart_dir / "env" / "base" / f"{service}.toml").read_text())
    overlay = chart_dir / "env" / environment / f"{service}.toml"
    return merge(base, tomllib.loads(overlay.read_text()) if overlay.exists() else {})


def check_alerts(chart_dir, root, objects, environment, values, metrics, values_by_label):
    findings = []
    rule = objects.get(("PrometheusRule", "quarry"))
    if rule is None:
        return [f"{environment}: no PrometheusRule quarry (monitoring.enabled is true by default)"]
    sections = headings((root / "docs" / "environments.md").read_text())
    interval = schedule_minutes(values)
    crl = service_config(chart_dir, environment, "crl-updater")
    names = []
    for group in rule["spec"]["groups"]:
        for item in group["rules"]:
            name = item.get("alert")
            if name is None:
                continue
            names.append(name)
            where = f"{environment}: alert {name}"
            expr = str(item.get("expr", ""))
            findings += check_expression(where, expr, metrics, values_by_label)
            held = parse_duration(item.get("for"))
            if not held:
                findings.append(f"{where}: no `for` (a single evaluation pages)")
            severity = (item.get("labels") or {}).get("severity")
            if severity not in SEVERITIES:
                findings.append(f"{where}: severity {severity!r}, not one of {sorted(SEVERITIES)}")
            annotations = item.get("annotations") or {}
            for key in ("summary", "description", "runbook_url"):
                if not annotations.get(key):
                    findings.append(f"{where}: no {key} annotation")
            runbook = annotations.get("runbook_url", "")
            document, _, anchor = runbook.partition("#")
            if runbook and document != "docs/environments.md":
                findings.append(f"{where}: runbook_url {runbook!r} is not in docs/environments.md")
            elif runbook and anchor not in sections:
                findings.append(f"{where}: runbook_url's #{anchor} is no heading of docs/environments.md")
            elif runbook and name not in sections[anchor]:
                findings.append(f"{where}: its runbook section (#{anchor}) does not mention it")
            if "quarry_probe_success" in expr and held and interval and held <= interval * 60:
                findings.append(f"{where}: `for` {item['for']} is within one probe interval ({interval} min): one "
                                "flaky run would page")
            if "UpdateCrlShard" in expr:
                window = re.search(r"\[([0-9]+[smhd])\]", expr)
                seconds = parse_duration(window.group(1)) if window else None
                needed = crl.get("max_age_secs", 0) + crl.get("update_period_secs", 0)
                if not seconds or seconds <= needed:
                    findings.append(f"{where}: its window ({window and window.group(1)}) must exceed the "
                                    f"crl-updater's max_age_secs + update_period_secs ({needed} s)")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        findings.append(f"{environment}: alerts defined twice: {duplicates}")
    return findings


def check_dashboard(chart_dir, objects, environment, metrics, values_by_label):
    findings = []
    path = chart_dir / "dashboards" / "quarry.json"
    try:
        dashboard = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return [f"{path}: {error}"]
    shipped = objects.get(("ConfigMap", "quarry-dashboard"))
    if shipped is None:
        findings.append(f"{environment}: no ConfigMap quarry-dashboard")
    else:
        if (shipped["metadata"].get("labels") or {}).get("grafana_dashboard") != "1":
            findings.append(f"{environment}: ConfigMap quarry-dashboard lacks the label grafana_dashboard: \"1\"")
        if json.loads(shipped["data"].get("quarry.json", "null")) != dashboard:
            findings.append(f"{environment}: ConfigMap quarry-dashboard does not hold dashboards/quarry.json")
    # The label values panels select on are Grafana variables ($namespace), not literals to check.
    literal_labels = {k: v for k, v in values_by_label.items() if k not in ("namespace", "environment")}

    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or [])

    count = 0
    for panel in panels(dashboard.get("panels") or []):
        where = f"dashboard panel {panel.get('title')!r}"
        for target in panel.get("targets") or []:
            if "expr" in target:
                count += 1
                findings += check_expression(where, target["expr"], metrics, literal_labels)
        datasource = panel.get("datasource")
        ours = isinstance(datasource, dict) and datasource.get("uid") == "${datasource}"
        if panel.get("type") != "row" and not ours:
            findings.append(f"{where}: its data source is not the dashboard's ${{datasource}} variable")
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", query or "")
        if variable.get("type") == "query" and not match:
            findings.append(f"dashboard variable {variable.get('name')}: {query!r} is not label_values(metric, label)")
        elif match:
            where = f"dashboard variable {variable.get('name')}"
            findings += check_expression(where, f"{match.group(1)}", metrics, literal_labels)
            findings += check_expression(where, f"sum by ({match.group(2)}) ({match.group(1)})", metrics, {})
    if count == 0:
        findings.append("the dashboard has no queries")
    return findings


def schedule_minutes(values):
    match = re.fullmatch(r"\*/([0-9]+) \* \* \* \*", str(values.get("prober", {}).get("schedule", "")))
    return int(match.group(1)) if match else None


def check_prober(chart_dir, objects, environment, values):
    findings = []
    cron = objects.get(("CronJob", "quarry-prober"))
    test = objects.get(("Pod", "quarry-prober-test"))
    if cron is None or test is None:
        return [f"{environment}: the prober's CronJob quarry-prober and helm test Pod quarry-prober-test must render"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    test_pod = {key: value for key, value in test["spec"].items() if key != "activeDeadlineSeconds"}
    if pod != test_pod:
        differing = sorted(key for key in set(pod) | set(test_pod) if pod.get(key) != test_pod.get(key))
        findings.append(f"{environment}: the CronJob's and the helm test's pods differ in {differing}")
    annotations = test["metadata"].get("annotations") or {}
    if annotations.get("helm.sh/hook") != "test" or not annotations.get("helm.sh/hook-delete-policy"):
        findings.append(f"{environment}: Pod quarry-prober-test is not a `helm test` hook with a delete policy")
    if pod.get("automountServiceAccountToken") is not False:
        findings.append(f"{environment}: the prober's pod mounts a service account token")
    spec = cron["spec"]
    if spec.get("concurrencyPolicy") != "Forbid":
        findings.append(f"{environment}: CronJob quarry-prober may run two probes at once")
    for key in ("startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
        if key not in spec:
            findings.append(f"{environment}: CronJob quarry-prober has no {key}")
    interval = schedule_minutes(values)
    deadline = spec["jobTemplate"]["spec"].get("activeDeadlineSeconds")
    if interval is None:
        findings.append(f"{environment}: prober.schedule {values['prober'].get('schedule')!r} is not */N * * * *")
    elif not deadline or deadline >= interval * 60:
        findings.append(f"{environment}: a probe may run {deadline} s, past the next run ({interval} min)")
    if test["spec"].get("activeDeadlineSeconds") != deadline:
        findings.append(f"{environment}: the helm test's deadline differs from the CronJob's")

    container = pod["containers"][0]
    image = container.get("image", "")
    digest = image.partition("@")[2]
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        findings.append(f"{environment}: the prober runs {image!r}, not an image by digest")
    deployments = [obj for (kind, _), obj in objects.items() if kind == "Deployment"]
    for deployment in deployments[:1]:
        service = deployment["spec"]["template"]["spec"]["containers"][0]
        if service["image"] != image or service.get("securityContext") != container.get("securityContext"):
            findings.append(f"{environment}: the prober's image or security context is not the services'")
    args = container.get("args") or []
    host = values["wfe"]["externalHost"]
    if args[:2] != ["probe", f"https://{host}/directory"]:
        findings.append(f"{environment}: the prober runs {args[:2]}, not `probe https://{host}/directory`")
    flags = dict(zip(args[2::2], args[3::2]))
    if set(flags) != PROBE_FLAGS or len(args) != 2 + 2 * len(PROBE_FLAGS):
        findings.append(f"{environment}: the probe's flags {sorted(flags)} are not {sorted(PROBE_FLAGS)}")
    expected = {
        "--environment": environment,
        "--image-digest": digest,
        "--name": f"{values['prober']['namePrefix']}.{host}",
        "--push-gateway": values["prober"]["pushGateway"],
        "--crl-wait-secs": str(values["prober"]["crlWaitSecs"]),
        "--min-scts": str(values["prober"]["minScts"]),
    }
    for flag, value in expected.items():
        if flags.get(flag) != value:
            findings.append(f"{environment}: probe {flag} {flags.get(flag)!r}, expected {value!r}")
    volumes = {volume["name"]: volume for volume in pod.get("volumes") or []}
    mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts") or []}

    def volume_of(path):
        parent = str(Path(path).parent)
        return volumes.get(mounts.get(parent, ""), {})

    wanted = {
        "--account-key": ("secret", values["prober"]["secrets"]["account"]),
        "--dns-hook": ("secret", values["prober"]["secrets"]["dnsHook"]),
        "--report-json": ("emptyDir", None),
    }
    for flag, (source, secret) in wanted.items():
        volume = volume_of(flags.get(flag, "/"))
        if source not in volume or (secret and volume[source].get("secretName") != secret):
            findings.append(f"{environment}: probe {flag} {flags.get(flag)!r} is not in a mounted {source} "
                            f"{secret or ''}")
    hook = volume_of(flags.get("--dns-hook", "/")).get("secret", {})
    if not hook.get("defaultMode", 0) & 0o111:
        findings.append(f"{environment}: the DNS hook is mounted without an execute bit")

    publisher = service_config(chart_dir, environment, "publisher")
    if "min_scts" in publisher and values["prober"]["minScts"] != publisher["min_scts"]:
        findings.append(f"{environment}: prober.minScts {values['prober']['minScts']} ≠ the publisher's min_scts "
                        f"{publisher['min_scts']}: the probe would pass certificates the policy refuses, or fail good "
                        "ones")
    crl = service_config(chart_dir, environment, "crl-updater")
    if values["prober"]["crlWaitSecs"] <= crl.get("update_period_secs", 0):
        findings.append(f"{environment}: prober.crlWaitSecs {values['prober']['crlWaitSecs']} does not outlast the "
                        f"crl-updater's update_period_secs {crl.get('update_period_secs')}")
    if deadline and values["prober"]["crlWaitSecs"] >= deadline:
        findings.append(f"{environment}: the probe's deadline ({deadline} s) ends it before its CRL wait")

    policy = objects.get(("NetworkPolicy", "quarry-prober"))
    if policy is None:
        findings.append(f"{environment}: no NetworkPolicy quarry-prober")
    else:
        selected = policy["spec"]["podSelector"].get("matchLabels", {})
        labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in selected.items()) or any(
            test["metadata"]["labels"].get(k) != v for k, v in selected.items()
        ):
            findings.append(f"{environment}: NetworkPolicy quarry-prober does not select the prober's pods")
        if set(policy["spec"].get("policyTypes") or []) != {"Ingress", "Egress"} or policy["spec"].get("ingress"):
            findings.append(f"{environment}: NetworkPolicy quarry-prober must deny all ingress and restrict egress")
    return findings


def check_monitoring_objects(objects, environment, values):
    """The operator's kinds against CRD_SCHEMAS, and the PodMonitor against the pods it should scrape."""
    findings = []
    for (kind, name), obj in objects.items():
        if not str(obj.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
            continue
        schema = CRD_SCHEMAS.get(kind)
        if schema is None or obj.get("apiVersion") != CRD_API_VERSION:
            findings.append(f"{environment}: {obj.get('apiVersion')} {kind}/{name}: no schema here to validate it")
            continue
        for error in jsonschema.Draft7Validator(schema).iter_errors(obj):
            location = ".".join(str(part) for part in error.absolute_path)
            findings.append(f"{environment}: {kind}/{name}: {location}: {error.message}")
    if findings:
        return findings
    monitor = objects.get(("PodMonitor", "quarry"))
    if monitor is None:
        return [f"{environment}: no PodMonitor quarry (monitoring.enabled is true by default)"]
    selector = monitor["spec"]["selector"].get("matchLabels", {})
    ports = {endpoint.get("port") for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    if monitor["spec"].get("namespaceSelector", {}).get("matchNames") != [values["namespace"]]:
        findings.append(f"{environment}: PodMonitor quarry does not look in {values['namespace']} alone")
    for (kind, name), obj in objects.items():
        if kind != "Deployment":
            continue
        template = obj["spec"]["template"]
        if any(template["metadata"]["labels"].get(k) != v for k, v in selector.items()):
            findings.append(f"{environment}: PodMonitor quarry does not select the pods of {name}")
        named = {
            port.get("name"): port.get("containerPort")
            for container in template["spec"]["containers"]
            for port in container.get("ports") or []
        }
        for port in ports:
            if named.get(port) != values["telemetry"]["metricsPort"]:
                findings.append(f"{environment}: {name} has no port {port!r} on {values['telemetry']['metricsPort']}")
    return findings


def resolve(schema, node):
    """`node` with its local $ref followed."""
    while isinstance(node, dict) and "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def untyped_keys(schema, node, value, path=""):
    """Every key of `value` (values.yaml) whose schema is missing or names no type."""
    node = resolve(schema, node)
    if not isinstance(node, dict) or not any(key in node for key in ("type", "enum", "const", "anyOf", "oneOf")):
        return [path or "(top)"]
    missing = []
    if isinstance(value, dict):
        for key, item in value.items():
            child = (node.get("properties") or {}).get(key)
            if child is None and isinstance(node.get("additionalProperties"), dict):
                child = node["additionalProperties"]
            if child is None:
                missing.append(f"{path}{key} (not in the schema)")
                continue
            missing += untyped_keys(schema, child, item, f"{path}{key}.")
    elif isinstance(value, list) and "items" in node:
        for index, item in enumerate(value):
            missing += untyped_keys(schema, node["items"], item, f"{path}{index}.")
    return missing


def check_schema(chart_dir, objects, environment, values):
    findings = []
    path = chart_dir / "values.schema.json"
    try:
        schema = json.loads(path.read_text())
        jsonschema.Draft7Validator.check_schema(schema)
    except (OSError, json.JSONDecodeError, jsonschema.SchemaError) as error:
        return [f"{path}: {error}"]
    if "draft-07" not in schema.get("$schema", ""):
        findings.append(f"{path}: $schema is not draft 07")
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    untyped = untyped_keys(schema, schema, defaults)
    findings += [f"values.schema.json does not type values.yaml's {key}" for key in untyped]
    image = next((obj["spec"]["template"]["spec"]["containers"][0]["image"]
                  for (kind, _), obj in objects.items() if kind == "Deployment"), "")
    digest = image.partition("@")[2] or "sha256:" + "5e" * 32
    real = merge(copy.deepcopy(values), {"image": {"digest": digest}})
    validator = jsonschema.Draft7Validator(schema)
    for error in validator.iter_errors(real):
        findings.append(f"values.schema.json refuses {environment}'s real values: "
                        f"{'.'.join(map(str, error.absolute_path))}: {error.message}")
    wrong = {
        "an image tag": {"image": {"tag": "0.1.0"}},
        "a tag for a digest": {"image": {"digest": "latest"}},
        "a tag in the repository": {"image": {"repository": "quarry:0.1.0"}},
        "an unknown environment": {"environment": "qa"},
        "a lone wfe": {"scale": {"wfe": 1}},
        "a scaled crl-updater": {"scale": {"crl-updater": 2}},
        "an hourly probe at minute 0": {"prober": {"schedule": "0 * * * *"}},
        "a misspelt key": {"monitorng": {"enabled": False}},
    }
    for what, change in wrong.items():
        if validator.is_valid(merge(copy.deepcopy(real), copy.deepcopy(change))):
            findings.append(f"values.schema.json accepts {what}: {change}")
    findings += check_helm_validation(chart_dir, environment, real)
    return findings


def check_helm_validation(chart_dir, environment, real):
    """Helm itself refuses values the schema refuses, before any template runs, and drops the operator's kinds
    when monitoring is off."""
    try:
        import helm_python
    except ImportError:
        return []
    findings = []
    chart = helm_python.Chart.load(str(chart_dir))
    env_file = yaml.safe_load((chart_dir / f"values-{environment}.yaml").read_text())

    def render(change):
        values = merge(copy.deepcopy(env_file), merge({"image": {"digest": real["image"]["digest"]}}, change))
        return chart.render(values=values, name="quarry", namespace=real["namespace"], is_install=True)

    try:
        render({"image": {"tag": "0.1.0"}})
        findings.append(f"{environment}: Helm rendered the chart with image.tag set")
    except helm_python.HelmError as error:
        if "schema" not in str(error) or "tag" not in str(error):
            findings.append(f"{environment}: image.tag failed the render, but not by the schema: {error}")
    try:
        rendered = render({"monitoring": {"enabled": False}})
        kinds = {
            doc.get("kind")
            for name, text in rendered.items() if not name.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc
            if str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/")
        }
        if kinds:
            findings.append(f"{environment}: monitoring.enabled=false still renders {sorted(kinds)}")
    except helm_python.HelmError as error:
        findings.append(f"{environment}: the chart does not render with monitoring.enabled=false: {error}")
    return findings


def differs_only_by_environment(a, b, values_a, values_b):
    """Whether two rendered strings are one once each environment's own values — its external host, namespace and
    name — are replaced by placeholders (the longest first: the host and namespace contain the name)."""
    def generic(text, values):
        for key, placeholder in (
            (values["wfe"]["externalHost"], "<host>"),
            (values["namespace"], "<namespace>"),
            (values["environment"], "<environment>"),
        ):
            text = text.replace(key, placeholder)
        return text

    return isinstance(a, str) and isinstance(b, str) and generic(a, values_a) == generic(b, values_b)


def kubernetes_validatable(obj):
    """Whether kubernetes-validate knows the object's kind (the operator's kinds are checked here instead)."""
    return not str(obj.get("apiVersion", "")).startswith("monitoring.coreos.com/")


def check_operations(chart_dir: Path, objects: dict, environment: str) -> list[str]:
    """Every finding about the prober, the alerts, the dashboard and the values schema in one environment's render."""
    chart_dir = Path(chart_dir).resolve()
    root = repo_root(chart_dir)
    values = environment_values(chart_dir, environment)
    metrics = rust_metrics(root)
    values_by_label = label_values(root, chart_dir, environment, values)
    findings = []
    findings += check_prober(chart_dir, objects, environment, values)
    if values.get("monitoring", {}).get("enabled", True):
        findings += check_monitoring_objects(objects, environment, values)
        findings += check_alerts(chart_dir, root, objects, environment, values, metrics, values_by_label)
    else:
        findings += [f"{environment}: monitoring.enabled is false, yet {kind}/{name} renders"
                     for (kind, name), obj in objects.items() if not kubernetes_validatable(obj)]
    findings += check_dashboard(chart_dir, objects, environment, metrics, values_by_label)
    findings += check_schema(chart_dir, objects, environment, values)
    return findings

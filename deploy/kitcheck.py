#!/usr/bin/env python3
"""Static checks of the deploy kit that need more than a one-liner (used by check.sh).

  kitcheck.py dashboard FILE [PROMQL_RULES_OUT]
      FILE is valid JSON and a sane Grafana dashboard (schemaVersion, ${DS_PROMETHEUS}
      datasource on every panel and query, `instance` variable, unique ids, panels inside
      24 columns and not overlapping), every PromQL expression names only agent metrics
      (see METRICS), and the panels the kit promises are there. With PROMQL_RULES_OUT,
      also writes every expression (Grafana variables substituted) as a Prometheus rule
      file, so that `promtool check rules` can parse them.
  kitcheck.py rules FILE
      Every `expr` of the rule file names only agent metrics, plus `up`.
  kitcheck.py scaled ORIGINAL SCALED DURATION
      SCALED differs from ORIGINAL only in `for:` lines, every `for:` of SCALED is DURATION,
      and (with PyYAML, if installed) both files are equal as data once every `for` is set
      to DURATION.
  kitcheck.py toml FILE [CONFIG_RS]
      FILE is valid TOML, uses only keys the agent's config file accepts (read from the
      FileConfig struct in CONFIG_RS when given and parseable, else the documented list),
      and its durations look like humantime durations.
  kitcheck.py exposition FILE
      FILE is a live /metrics scrape of the agent (the lab test writes it): every name of
      METRICS, which the rules and the dashboard may use, has a TYPE line in it, so the
      kit names only metrics that exist.
Each prints one line and exits 0 (pass) or 1 (fail).
"""

import json
import re
import sys

# The only metric names the agent exports that the kit may query (see deploy/README.md).
METRICS = {
    "scan_syn_packets_total",
    "scan_syn_rate",
    "scan_syn_baseline_rate",
    "scan_syn_expected_rate",
    "scan_port_learning_state",
    "scan_surge_ratio",
    "scan_surge_flagged",
    "scan_surge_threshold",
    "scan_syn_sources",
    "scan_syn_sources_baseline",
    "scan_syn_targets",
    "scan_syn_targets_baseline",
    "scan_packets_total",
    "scan_packet_flags_total",
    "scan_agent_attached",
    "scan_agent_poll_duration_seconds",
    "scan_agent_poll_errors_total",
    "scan_agent_last_poll_timestamp_seconds",
    "scan_agent_warming_up",
    "scan_agent_warmup_remaining_seconds",
    "scan_agent_ports_active",
    "scan_agent_ports_exported",
    "scan_agent_ports_left_out",
    "scan_agent_state_save_errors_total",
    "scan_agent_state_restore_failures_total",
    "scan_agent_count_resets_total",
    "scan_agent_clock_steps_total",
    "scan_agent_reattaches_total",
    "scan_agent_syns_without_slot_total",
    "scan_agent_build_info",
}
HISTOGRAMS = {"scan_agent_poll_duration_seconds"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Keys of the agent's TOML file when scan-agent/src/config.rs cannot be read.
DOC_TOML_KEYS = {
    "iface", "xdp_mode", "web_listen_address", "interval", "short_window", "baseline_window", "warmup",
    "surge_threshold", "watch_ports", "top_ports", "state_file", "pin_path",
}
DURATION_KEYS = {"interval", "short_window", "baseline_window", "warmup", "save_interval", "export_hold",
                 "surge_adapt_window"}


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def bad_metric_names(expr, extra_allowed=()):
    """Names in `expr` that are not agent metrics: every scan_* token (histogram suffixes
    allowed only on histograms), and every identifier used as a selector (`name{`)."""
    bad = set()
    for tok in re.findall(r"scan_[a-z_]+", expr):
        base = tok
        for suf in HISTOGRAM_SUFFIXES:
            if tok.endswith(suf) and tok[: -len(suf)] in HISTOGRAMS:
                base = tok[: -len(suf)]
        if base not in METRICS:
            bad.add(tok)
    for name in re.findall(r"(?<![\w:$])([A-Za-z_:][\w:]*)\s*\{", expr):
        if name.startswith("scan_"):
            continue  # judged above
        if name not in extra_allowed:
            bad.add(name)
    return bad


GRAFANA_VARS = [
    (r"\$__rate_interval|\$\{__rate_interval\}", "5m"),
    (r"\$__interval|\$\{__interval\}", "1m"),
    (r"\$__range|\$\{__range\}", "1h"),
    (r"\$\{?[A-Za-z_]\w*\}?", ".*"),
]


def substitute(expr):
    for pat, val in GRAFANA_VARS:
        expr = re.sub(pat, val, expr)
    return expr


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_dashboard(path, rules_out=None):
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{path}: not valid JSON: {e}")
    problems = []
    sv = d.get("schemaVersion")
    if not isinstance(sv, int) or not 36 <= sv <= 41:
        problems.append(f"schemaVersion {sv!r} (want about 39)")
    if not d.get("uid") or not d.get("title"):
        problems.append("missing uid or title")
    inputs = [i.get("name") for i in d.get("__inputs", [])]
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    if "DS_PROMETHEUS" not in inputs and variables.get("DS_PROMETHEUS", {}).get("type") != "datasource":
        problems.append("no DS_PROMETHEUS input or datasource variable")
    if "instance" not in variables:
        problems.append("no `instance` template variable")

    ds_ok = lambda ds: isinstance(ds, dict) and ds.get("uid") == "${DS_PROMETHEUS}"
    exprs = []  # (where, expr)
    for name, v in variables.items():
        if v.get("type") == "query":
            if not ds_ok(v.get("datasource")):
                problems.append(f"variable {name}: datasource is not ${{DS_PROMETHEUS}}")
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else (q or "")
            for text in {q, v.get("definition", "")}:
                m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text)
                exprs.append((f"variable {name}", m.group(1) if m else text))

    ids, boxes = set(), []
    for p in walk_panels(d.get("panels", [])):
        pid, title = p.get("id"), p.get("title", "?")
        if pid in ids:
            problems.append(f"duplicate panel id {pid}")
        ids.add(pid)
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")) or g["x"] + g["w"] > 24:
            problems.append(f"panel {title!r}: bad gridPos {g}")
        else:
            boxes.append((title, g))
        if p.get("type") == "row":
            continue
        if not ds_ok(p.get("datasource")):
            problems.append(f"panel {title!r}: datasource is not ${{DS_PROMETHEUS}}")
        targets = p.get("targets", [])
        if not targets:
            problems.append(f"panel {title!r}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)):
            problems.append(f"panel {title!r}: duplicate refId")
        for t in targets:
            if not ds_ok(t.get("datasource")):
                problems.append(f"panel {title!r} query {t.get('refId')}: datasource is not ${{DS_PROMETHEUS}}")
            if not t.get("expr", "").strip():
                problems.append(f"panel {title!r} query {t.get('refId')}: empty expr")
            exprs.append((f"panel {title!r} query {t.get('refId')}", t.get("expr", "")))
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]:
                problems.append(f"panels {ta!r} and {tb!r} overlap")

    used = set()
    for where, e in exprs:
        bad = bad_metric_names(e)
        if bad:
            problems.append(f"{where}: names outside the agent's metric list: {sorted(bad)}")
        used |= {t for t in re.findall(r"scan_[a-z_]+", e)}

    # What the kit promises (deploy/README.md): these must be on the dashboard.
    all_text = "\n".join(e for _, e in exprs)
    promised = {
        "top ports by surge ratio (topk over scan_surge_ratio)": r"topk\([^)]*scan_surge_ratio",
        "rate vs baseline per $port": r"scan_syn_rate\{[^}]*\$port",
        "baseline per $port": r"scan_syn_baseline_rate\{[^}]*\$port",
        "packets by outcome": r"by \(outcome\) \(rate\(scan_packets_total",
        "packets by flag": r"by \(flag\) \(rate\(scan_packet_flags_total",
        "attached interfaces": r"scan_agent_attached",
        "poll duration": r"scan_agent_poll_duration_seconds_bucket",
        "poll errors": r"scan_agent_poll_errors_total",
        "warm-up": r"scan_agent_warming_up",
        "ports left out": r"scan_agent_ports_left_out",
    }
    for what, pat in promised.items():
        if not re.search(pat, all_text):
            problems.append(f"missing panel: {what}")

    if problems:
        fail(f"{path}: " + "; ".join(problems))
    if rules_out:
        with open(rules_out, "w") as f:
            f.write("groups:\n  - name: dashboard-expressions\n    rules:\n")
            for i, (where, e) in enumerate(exprs):
                f.write(f"      - record: dashboard_expr_{i}\n        expr: {json.dumps(substitute(e))}\n")
    print(f"valid JSON, schemaVersion {sv}, {len(ids)} panels, {len(exprs)} PromQL "
          f"expressions naming only agent metrics ({len(used)} distinct names)")


def rule_exprs(path):
    """`expr:` values of a Prometheus rule file, without a YAML library (block scalars and
    single-line values, which is what the kit's files use)."""
    lines = open(path).read().split("\n")
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        if m:
            indent, rest = len(m.group(1)), m.group(2)
            if rest in ("|", ">", "|-", ">-"):
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i])
                    i += 1
                out.append("\n".join(body))
                continue
            out.append(rest.strip("'\""))
        i += 1
    return out


def check_rules(path):
    exprs = rule_exprs(path)
    if not exprs:
        fail(f"{path}: no expr found")
    problems = []
    for e in exprs:
        bad = bad_metric_names(e, extra_allowed=("up",))
        if bad:
            problems.append(f"{' '.join(e.split())[:60]!r}: {sorted(bad)}")
    if problems:
        fail(f"{path}: names outside the agent's metric list (+ up): " + "; ".join(problems))
    print(f"{len(exprs)} expressions name only agent metrics (and up)")


FOR_RE = re.compile(r"^\s*for:\s*\S+\s*$")


def check_scaled(orig, scaled, duration):
    a, b = open(orig).read().split("\n"), open(scaled).read().split("\n")
    if len(a) != len(b):
        fail(f"{scaled}: {len(b)} lines, {orig} has {len(a)}")
    n_for, changed = 0, 0
    for i, (x, y) in enumerate(zip(a, b), 1):
        if FOR_RE.match(x):
            n_for += 1
            if not re.fullmatch(r"\s*for: " + re.escape(duration), y) or y.split("for:")[0] != x.split("for:")[0]:
                fail(f"{scaled}:{i}: for: line is {y!r}, want indentation kept and 'for: {duration}'")
            changed += x != y
        elif x != y:
            fail(f"{scaled}:{i}: differs from {orig} and is not a for: line: {x!r} -> {y!r}")
    if n_for == 0:
        fail(f"{orig}: no for: line")
    note = "PyYAML not installed: data-level comparison skipped"
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml:
        da, db = yaml.safe_load(open(orig)), yaml.safe_load(open(scaled))
        n_rules_for = 0
        for g in da["groups"]:
            for r in g["rules"]:
                if "for" in r:
                    r["for"] = duration
                    n_rules_for += 1
        if da != db:
            fail(f"{scaled}: as YAML data it differs from {orig} beyond the for: values")
        if n_rules_for != n_for:
            fail(f"{orig}: {n_for} for: lines but {n_rules_for} rules with `for`")
        note = f"equal as YAML data once every `for` is {duration}"
    print(f"only the {n_for} for: lines differ ({changed} changed to {duration}); {note}")


def toml_keys_from_config_rs(path):
    try:
        src = open(path).read()
    except OSError:
        return None
    m = re.search(r"pub struct FileConfig\s*\{(.*?)\n\}", src, re.S)
    if not m:
        return None
    keys = set(re.findall(r"^\s*(?:pub\s+)?([a-z_][a-z0-9_]*)\s*:", m.group(1), re.M))
    return keys or None


def check_toml(path, config_rs=None):
    import tomllib
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"{path}: not valid TOML: {e}")
    keys = toml_keys_from_config_rs(config_rs) if config_rs else None
    source = f"FileConfig in {config_rs}" if keys else "the documented key list"
    known = keys or DOC_TOML_KEYS | DURATION_KEYS | {"floor", "keep_attached", "debug_program"}
    problems = [f"unknown key {k!r}" for k in cfg if k not in known]
    missing = DOC_TOML_KEYS - set(cfg)
    if missing:
        problems.append(f"example should show every documented key; missing {sorted(missing)}")
    dur = re.compile(r"^(\d+\s*(ns|us|ms|s|sec|secs|m|min|mins|h|hr|hrs|hour|hours|d|day|days|w|week|weeks)\s*)+$")
    for k in DURATION_KEYS & set(cfg):
        if not isinstance(cfg[k], str) or not dur.match(cfg[k]):
            problems.append(f"{k} = {cfg[k]!r} is not a duration string like \"5s\"")
    if not isinstance(cfg.get("iface", []), list):
        problems.append("iface must be a list")
    if problems:
        fail(f"{path}: " + "; ".join(problems))
    print(f"valid TOML, {len(cfg)} keys, all accepted by {source}")


def check_exposition(path):
    with open(path) as f:
        typed = set(re.findall(r"^# TYPE (\S+) ", f.read(), re.M))
    missing = sorted(METRICS - typed)
    if missing:
        fail(f"{path}: the kit's metric names missing from the agent's output: {missing}")
    print(f"all {len(METRICS)} metric names of the kit are in the agent's output")


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "dashboard":
        check_dashboard(*args[:2])
    elif cmd == "rules":
        check_rules(args[0])
    elif cmd == "scaled" and len(args) == 3:
        check_scaled(*args)
    elif cmd == "exposition":
        check_exposition(args[0])
    elif cmd == "toml":
        check_toml(*args[:2])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()

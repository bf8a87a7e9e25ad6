#!/usr/bin/env python3
"""Generate background_test.yml: three simulated days of normal traffic, no alert.

Model (per router and watched port): the true SYN rate follows a daily cycle with a
3x swing between the 04:00 trough and the 16:00 peak, times hourly noise of up to
+-10%; the agent's baseline is an exponentially weighted mean of the rate with a 6 h
time constant (so it follows the cycle damped and late); the surge ratio is
(rate + floor) / (baseline + floor) with floor 0.1 SYN/s. Knots are hourly and
promtool interpolates linearly between them (`a+bx19`, one sample every 3 minutes:
the samples stay closer together than the 5 minute lookback, so no series ever
vanishes between two samples and resets an alert's `for`).

On top of that, designed near misses, each stopped by one guard of the rules:
  - port 23, 50h:     one 3-minute spike of 10x                    (`for`)
  - port 22, 20h:     a 12-minute burst of 6x at 100 SYN/s         (`for`)
  - port 3389, 40h:   a 9-minute burst of 30x at 200 SYN/s         (`for` of the critical alert)
  - port 5900, 30h:   an hour at 6.7x but only 0.9 SYN/s           (minimum rate)
  - router2 restarts at 60h and warms up for an hour at ratio 8x   (warm-up)
and, as a positive control so the test cannot pass vacuously, a real surge on
port 445 of router1 from 72h: it must fire PortScanSurge at 72h15m.

Run from anywhere:  python3 deploy/prometheus/tests/gen_background.py
deploy/check.sh regenerates the file and fails if the committed copy differs.
"""

import math
import os
import random
import sys

STEP_MIN = 3                 # minutes between samples
PER_HOUR = 60 // STEP_MIN    # 20 samples per hour
BACKGROUND_H = 72            # three days of background
TOTAL_H = 75                 # + positive control
FLOOR = 0.1
TAU_H = 6.0                  # baseline time constant (hours)
JOB = "scan-agent"

# Expected pending minutes of the near misses stopped by `for` (burst samples x 3 min).
PENDING = [
    ("PortScanSurge", "warning", "22", 12),
    ("PortScanSurge", "warning", "23", 3),
    ("PortScanSurge", "warning", "3389", 9),
    ("PortScanSurgeCritical", "critical", "3389", 9),
]

# (instance, port, mean SYN/s)
PORTS = [
    ("router1:9745", "445", 8.0),
    ("router1:9745", "22", 20.0),
    ("router1:9745", "23", 5.0),
    ("router1:9745", "3389", 6.0),
    ("router1:9745", "80", 120.0),
    ("router1:9745", "5900", 0.05),
    ("router2:9745", "445", 12.0),
    ("router2:9745", "22", 9.0),
]


def fmt(x):
    s = f"{x:.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def cycle(hour):
    """Daily factor between 0.5 (04:00) and 1.5 (16:00): a 3x swing."""
    return 1.0 + 0.5 * math.sin(2 * math.pi * (hour - 10.0) / 24.0)


def knots(mean, rng):
    """Hourly knots (TOTAL_H + 1 of them) of rate, baseline and ratio."""
    rate = [mean * cycle(h) * (1.0 + rng.uniform(-0.1, 0.1)) for h in range(TOTAL_H + 1)]
    alpha = 1.0 - math.exp(-1.0 / TAU_H)
    base = []
    b = mean  # state restored from the state file: already learned
    for r in rate:
        b = b + alpha * (r - b)
        base.append(b)
    ratio = [(r + FLOOR) / (bb + FLOOR) for r, bb in zip(rate, base)]
    return rate, base, ratio


def expand(k):
    """Per-sample values (linear between hourly knots), TOTAL_H*PER_HOUR + 1 of them."""
    out = []
    for h in range(TOTAL_H):
        a, b = k[h], k[h + 1]
        for i in range(PER_HOUR):
            out.append(a + (b - a) * i / PER_HOUR)
    out.append(k[TOTAL_H])
    return out


def encode(k, overrides):
    """promtool series notation: `a+bx19` per hour unless a sample of the hour is overridden."""
    parts = []
    for h in range(TOTAL_H):
        idx = range(h * PER_HOUR, (h + 1) * PER_HOUR)
        if any(i in overrides for i in idx):
            a, b = k[h], k[h + 1]
            for j, i in enumerate(idx):
                parts.append(fmt(overrides.get(i, a + (b - a) * j / PER_HOUR)))
        else:
            a = float(fmt(k[h]))
            step = (k[h + 1] - a) / PER_HOUR
            sign = "+" if step >= 0 else "-"
            parts.append(f"{fmt(a)}{sign}{fmt(abs(step))}x{PER_HOUR - 1}")
    parts.append(fmt(overrides.get(TOTAL_H * PER_HOUR, k[TOTAL_H])))
    return " ".join(parts)


def sample(hour, minute=0):
    return hour * PER_HOUR + minute // STEP_MIN


def main():
    rng = random.Random(20240445)
    series = []      # (metric, labels, values)
    near_miss = {}   # (instance, port) -> max ratio of the designed overrides

    for inst, port, mean in PORTS:
        rate, base, ratio = knots(mean, rng)
        o_rate, o_base, o_ratio = {}, {}, {}

        def burst(start, n, r, b):
            for i in range(start, start + n):
                o_rate[i] = r
                o_base[i] = b
                o_ratio[i] = round((r + FLOOR) / (b + FLOOR), 4)
            near_miss[(inst, port)] = round((r + FLOOR) / (b + FLOOR), 4)

        if inst == "router1:9745" and port == "23":
            burst(sample(50), 1, 50.0, 5.0)
        if inst == "router1:9745" and port == "22":
            burst(sample(20), 4, 120.0, 20.0)
        if inst == "router1:9745" and port == "3389":
            burst(sample(40), 3, 180.0, 6.0)
        if inst == "router1:9745" and port == "5900":
            burst(sample(30), PER_HOUR, 0.9, 0.05)
        if inst == "router2:9745" and port == "445":
            # after the restart at 60h the agent warms up; its ratio is not trusted yet
            burst(sample(60), PER_HOUR, 96.0, 12.0)
        if inst == "router1:9745" and port == "445":
            # positive control: a real surge from 72h to the end
            for i in range(sample(BACKGROUND_H), TOTAL_H * PER_HOUR + 1):
                o_rate[i], o_base[i], o_ratio[i] = 80.0, 8.0, round(80.1 / 8.1, 4)

        labels = f'job="{JOB}",instance="{inst}",port="{port}"'
        series.append(("scan_syn_rate", labels, encode(rate, o_rate)))
        series.append(("scan_syn_baseline_rate", labels, encode(base, o_base)))
        # A 3x smooth cycle on busy ports is what the plain baseline covers; the expectation
        # exported is that baseline (state "baseline").
        series.append(("scan_syn_expected_rate", labels, encode(base, o_base)))
        series.append(("scan_surge_ratio", labels, encode(ratio, o_ratio)))

    n = TOTAL_H * PER_HOUR
    warm = {"router1:9745": f"0x{n}",
            "router2:9745": f"0x{sample(60) - 1} 1x{PER_HOUR - 1} 0x{n - sample(61)}"}
    for inst, vals in warm.items():
        series.append(("scan_agent_warming_up", f'job="{JOB}",instance="{inst}"', vals))

    out = []
    w = out.append
    w("# GENERATED by gen_background.py -- do not edit; edit the generator and rerun it.")
    w("# Three days of background with a daily 3x cycle: no PortScanSurge* alert may fire.")
    w("# See the generator's docstring for the model and the designed near misses.")
    w("rule_files:")
    w("  - ../scan-agent.rules.yml")
    w("")
    w("evaluation_interval: 1m")
    w("")
    w("tests:")
    w(f"  - interval: {STEP_MIN}m")
    w("    input_series:")
    for metric, labels, values in series:
        w(f"      - series: '{metric}{{{labels}}}'")
        w(f"        values: '{values}'")
    w("")
    w("    promql_expr_test:")
    w("      # The background really has a daily cycle of about 3x on every port.")
    w("      - expr: count((max_over_time(scan_syn_rate[24h]) / min_over_time(scan_syn_rate[24h])) > 2.4)")
    w("        eval_time: 48h")
    w("        exp_samples:")
    w(f"          - value: {len(PORTS)}")
    end = f"{BACKGROUND_H - 1}h59m"   # last evaluation before the positive control
    w("      # Over the three days the only ratios at or above 5 are the designed near misses.")
    w(f"      - expr: max_over_time(scan_surge_ratio[{BACKGROUND_H}h]) >= 5")
    w(f"        eval_time: {end}")
    w("        exp_samples:")
    for (inst, port), v in sorted(near_miss.items()):
        w(f"          - labels: '{{job=\"{JOB}\",instance=\"{inst}\",port=\"{port}\"}}'")
        w(f"            value: {fmt(v)}")
    w("      # No PortScanSurge* alert fired during the three days ...")
    w(f"      - expr: count_over_time(ALERTS{{alertname=~\"PortScanSurge.*\",alertstate=\"firing\"}}[{BACKGROUND_H}h])")
    w(f"        eval_time: {end}")
    w("        exp_samples: []")
    w("      # ... and only the short bursts went pending (minutes pending), stopped by `for`.")
    w(f"      - expr: count_over_time(ALERTS{{alertname=~\"PortScanSurge.*\",alertstate=\"pending\"}}[{BACKGROUND_H}h])")
    w(f"        eval_time: {end}")
    w("        exp_samples:")
    for name, sev, port, minutes in PENDING:
        w(f"          - labels: '{{alertname=\"{name}\",alertstate=\"pending\",instance=\"router1:9745\",job=\"{JOB}\",port=\"{port}\",severity=\"{sev}\"}}'")
        w(f"            value: {minutes}")
    w("")
    w("    alert_rule_test:")
    for h in range(0, BACKGROUND_H + 1, 6):
        for name in ("PortScanSurge", "PortScanSurgeCritical"):
            w(f"      - eval_time: {h}h")
            w(f"        alertname: {name}")
            w("        exp_alerts: []")
    w("      # Positive control: the surge on port 445 from 72h fires after `for: 15m`.")
    w(f"      - eval_time: {BACKGROUND_H}h14m")
    w("        alertname: PortScanSurge")
    w("        exp_alerts: []")
    w(f"      - eval_time: {BACKGROUND_H}h16m")
    w("        alertname: PortScanSurge")
    w("        exp_alerts:")
    w("          - exp_labels:")
    w("              severity: warning")
    w(f"              job: {JOB}")
    w("              instance: router1:9745")
    w("              port: \"445\"")
    w("            exp_annotations:")
    w("              summary: 'SYN surge to TCP port 445 on router1:9745: 9.9x normal'")
    w("              description: 'TCP port 445 on router1:9745 receives 80 SYN/s against an expected 8.00 SYN/s (surge ratio 9.9), from (unknown) distinct sources to (unknown) distinct targets over the short window. Scanning of one port far above its normal level has preceded worm outbreaks.'")
    w("              runbook: \"https://runbooks.example.org/scan-agent#portscansurge (replace with your copy of deploy/README.md, section PortScanSurge)\"")
    text = "\n".join(out) + "\n"

    dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "background_test.yml")
    with open(dest, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# bench/paired.sh - paired ratios between targets of one interleaved run.
#
#   bench/paired.sh RAW.csv A/B [A/B ...]
#
# RAW.csv is a run's raw.csv: bench/run.sh load's, or ../shared/bench/run.sh's (the
# shared mode's). For each pair it prints, for req/s and for CPU per request, the ratio
# of the medians over rounds (what the summaries print) and the median of the per-round
# ratios A/B. Targets of one round ran seconds apart, so a per-round ratio compares them
# under the same machine conditions; its median is steadier than the ratio of medians
# when the machine drifts between rounds. CPU per request is the proxy process's
# (proc_us_req) in load runs and the whole machine's minus the same round's direct target
# (the added CPU) in shared runs.
set -euo pipefail
[[ $# -ge 2 && -f $1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
raw=$1
shift
awk -F, -v pairs="$*" '
  function sortn(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
  function median(a, n) { sortn(a, n); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function cpu(t, r) { return shared ? val[t, r, "cpu"] - val["direct", r, "cpu"] : val[t, r, "cpu"] }
  # stats A B COL: prints "ratio of medians, median of per-round ratios" for column COL
  function stats(a, b, col,   r, n, x, y, q, k) {
    n = 0; k = 0
    for (r = 1; r <= rounds; r++) {
      if (!((a, r, "rps") in val) || !((b, r, "rps") in val)) continue
      n++
      x[n] = col == "rps" ? val[a, r, "rps"] : cpu(a, r)
      y[n] = col == "rps" ? val[b, r, "rps"] : cpu(b, r)
      if (y[n] > 0) q[++k] = x[n] / y[n]
    }
    if (!(a in seen)) return "no target " a " in this run"
    if (!(b in seen)) return "no target " b " in this run"
    if (n == 0 || k == 0) return "no common rounds"
    return sprintf("%.2f (medians) %.2f (paired, %d rounds)", median(x, n) / median(y, n), median(q, k), k)
  }
  NR == 1 {
    for (i = 1; i <= NF; i++) col[$i] = i
    if (!("target" in col) || !("round" in col) || !("rps" in col)) { print "not a raw.csv: " FILENAME > "/dev/stderr"; exit 2 }
    cpucol = ("proc_us_req" in col) ? col["proc_us_req"] : col["cpu_us_per_req"]
    shared = !("proc_us_req" in col)
    next
  }
  {
    t = $col["target"]; r = $col["round"] + 0; seen[t] = 1
    val[t, r, "rps"] = $col["rps"] + 0; val[t, r, "cpu"] = $cpucol + 0
    if (r > rounds) rounds = r
  }
  END {
    if (shared) print "CPU: the whole machine per request minus the same round'\''s direct target"
    else print "CPU: the proxy process per request"
    np = split(pairs, p, " ")
    for (i = 1; i <= np; i++) {
      if (split(p[i], ab, "/") != 2) { print "pair " p[i] ": want A/B" > "/dev/stderr"; exit 2 }
      printf "%s / %s: req/s %s; CPU/req %s\n", ab[1], ab[2], stats(ab[1], ab[2], "rps"), stats(ab[1], ab[2], "cpu")
    }
  }' "$raw"

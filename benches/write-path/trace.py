#!/usr/bin/env python3
"""Per-stage offsets (µs from api.received) of single, sequential writes, from the nodes' JSON logs.

    trace.py [--slowest PCT] n1.log n2.log n3.log

Prints the median offset of each stage from the leader's `api.received`, then, for the slowest
PCT % of writes (default 2), which wait between two consecutive events (on any node) was the
longest one of each such write, grouped, and by the stage that ended it: where the tail of the
latency is spent (a wait that ends in `log.durable` was an fsync).
"""
import argparse, collections, datetime, json, statistics

ap = argparse.ArgumentParser()
ap.add_argument('--slowest', type=float, default=2.0,
                help='the share of writes (%%, by total time) whose longest wait is shown')
ap.add_argument('logs', nargs='+')
args = ap.parse_args()

evs = []
for path in args.logs:
    node = path.rsplit('/', 1)[-1].split('.')[0]
    for line in open(path):
        if 'write_path' not in line:
            continue
        d = json.loads(line)
        ts = datetime.datetime.fromisoformat(d['timestamp'].replace('Z', '+00:00')).timestamp() * 1e6
        evs.append((ts, node, d['fields']['stage']))
evs.sort(key=lambda e: e[0])

# One write: every event from the leader's api.received to its api.reply, in time order.
writes = []
cur = None
for ts, node, stage in evs:
    if stage == 'api.received':
        cur = [(ts, node, stage)]
        leader = node
        continue
    if cur is None:
        continue
    cur.append((ts, node, stage))
    if stage == 'api.reply' and node == leader:
        writes.append(cur)
        cur = None

offs = collections.defaultdict(list)
for w in writes:
    t0 = w[0][0]
    seen = collections.Counter()
    for ts, node, stage in w[1:]:
        key = f"{node}:{stage}"
        seen[key] += 1
        offs[f"{key}#{seen[key]}"].append(ts - t0)
rows = sorted(((statistics.median(v), k, len(v)) for k, v in offs.items()), key=lambda r: r[0])
for m, k, n in rows:
    if n > len(writes) / 2:
        print(f"{m:8.0f} µs  {k}  (n={n})")

if writes:
    total = sorted(w[-1][0] - w[0][0] for w in writes)
    pct = lambda p: total[min(len(total) - 1, int(len(total) * p))]
    print(f"\n{len(writes)} writes, api.received -> api.reply: p50 {pct(.5):.0f} µs, "
          f"p99 {pct(.99):.0f} µs, max {total[-1]:.0f} µs")
    cut = pct(1 - args.slowest / 100)
    slow = [w for w in writes if w[-1][0] - w[0][0] >= cut]
    count = collections.Counter()
    spent = collections.defaultdict(float)
    ended = collections.Counter()
    for w in slow:
        i = max(range(1, len(w)), key=lambda i: w[i][0] - w[i - 1][0])
        gap = f"{w[i - 1][1]}:{w[i - 1][2]} -> {w[i][1]}:{w[i][2]}"
        count[gap] += 1
        spent[gap] += w[i][0] - w[i - 1][0]
        ended[w[i][2]] += 1
    print(f"the slowest {len(slow)} (>= {cut:.0f} µs): their longest wait, between")
    for gap, n in count.most_common(12):
        print(f"{n:6d} x  {spent[gap] / n:8.0f} µs on average  {gap}")
    print("the stage that ended it (on any node): " +
          ", ".join(f"{stage} {n}" for stage, n in ended.most_common()))

#!/usr/bin/env python3
"""Per-stage offsets (µs from api.received) of single, sequential writes, from the nodes' JSON logs."""
import json, sys, datetime, statistics, collections
evs = []
for path in sys.argv[1:]:
    node = path.rsplit('/',1)[-1].split('.')[0]
    for line in open(path):
        if 'write_path' not in line: continue
        d = json.loads(line)
        ts = datetime.datetime.fromisoformat(d['timestamp'].replace('Z','+00:00')).timestamp()*1e6
        f = d['fields']
        if f.get('reply') == 'None' or 'entries: []' in str(f): pass
        evs.append((ts, node, f['stage'], f))
evs.sort(key=lambda e: e[0])
offs = collections.defaultdict(list)
cur = None; seen = None
for ts, node, stage, f in evs:
    if stage == 'api.received':
        cur = ts; seen = collections.Counter(); continue
    if cur is None: continue
    key = f"{node}:{stage}"
    seen[key] += 1
    key = f"{key}#{seen[key]}"
    offs[key].append(ts - cur)
    if stage == 'api.reply': cur = None
rows = sorted(((statistics.median(v), k, len(v)) for k, v in offs.items()), key=lambda r: r[0])
for m, k, n in rows:
    if n > len(offs.get('n1:api.reply#1', [1]))/2:
        print(f"{m:8.0f} µs  {k}  (n={n})")

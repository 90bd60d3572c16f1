import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
hdr_i = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
hdr = rows[hdr_i]; k = hdr.index("Kernel Name"); v = hdr.index("Metric Value"); u = hdr.index("Metric Unit")
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows[hdr_i + 1:]:
    if len(r) <= v: continue
    val = float(r[v].replace(",", "")); unit = r[u]
    us = val / 1e3 if unit == "nsecond" else val if unit == "usecond" else val * 1e3 if unit == "msecond" else val
    tot[r[k]] += us; cnt[r[k]] += 1
all_us = sum(tot.values())
for name, t in sorted(tot.items(), key=lambda x: -x[1]):
    print(f"{t:9.1f} us {100*t/all_us:5.1f} % {cnt[name]:4d}x  {t/cnt[name]:7.2f} us/launch  {name[:60]}")
print(f"total {all_us:.1f} us over {sum(cnt.values())} launches")

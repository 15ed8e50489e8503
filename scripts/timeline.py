#!/usr/bin/env python3
"""Where a replicated write's time goes, stage by stage.

Reads the write timelines a loopback pair recorded with
TWINBLOCK_TIMELINE=DIR (DIR/a.timeline for the Primary, DIR/b.timeline for
the Secondary, DIR/relay.timeline for a `twinblock netem` relay between
them; see timeline/src/lib.rs) and prints, for the writes of the middle
60% of the recording, each stage's latency: mean, p50, p90, p99 in
microseconds and its share of the whole (from the NBD read that brought
the request to the node's answer). All processes share the host's
monotonic clock, so the stages join across them.

Usage: scripts/timeline.py DIR [--primary a] [--secondary b] [--fio-clat-us MEAN] [--json]
(--fio-clat-us: the client's mean completion latency of the same run, to
show what lies outside the nodes: the client, its NBD library, TCP.
--json: the same figures as one JSON object, for machines.)
"""
import bisect
import json
import os
import struct
import sys

POINTS = dict(nbd_read=20, admitted=1, answered=9, frame=2, handed=3, writer_took=10,
              ack_handed=6, ack_writer_took=11, udp_send=30, udp_recv=31, frame_decoded=5,
              ack_decoded=8, relay_in_fwd=40, relay_out_fwd=41, relay_in_back=42, relay_out_back=43)


def load(path):
    """{point: [(t_ns, key)]} sorted by time."""
    ev = {}
    with open(path, "rb") as f:
        data = f.read()
    for t, pk in struct.iter_unpack("<QQ", data[: len(data) // 16 * 16]):
        ev.setdefault(pk >> 56, []).append((t, pk & ((1 << 56) - 1)))
    for v in ev.values():
        v.sort()
    return ev


def stats(v):
    v = sorted(v)
    n = len(v)
    return sum(v) / n, v[n // 2], v[n * 9 // 10], v[min(n - 1, n * 99 // 100)]


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit(__doc__)
    d = args[0]
    prim = args[args.index("--primary") + 1] if "--primary" in args else "a"
    sec = args[args.index("--secondary") + 1] if "--secondary" in args else "b"
    A = load(os.path.join(d, f"{prim}.timeline"))
    B = load(os.path.join(d, f"{sec}.timeline"))
    rpath = os.path.join(d, "relay.timeline")
    R = load(rpath) if os.path.exists(rpath) else {}
    P = POINTS
    need = [(A, "admitted"), (A, "answered"), (A, "frame"), (A, "handed"), (A, "writer_took"),
            (A, "ack_decoded"), (A, "udp_send"), (B, "frame_decoded"), (B, "ack_handed"),
            (B, "ack_writer_took"), (B, "udp_recv"), (A, "nbd_read")]
    for ev, name in need:
        if not ev.get(P[name]):
            sys.exit(f"timeline.py: no '{name}' marks: was TWINBLOCK_TIMELINE set for both nodes, and did writes replicate?")

    def by_key(ev, name):
        return {k: t for t, k in ev[P[name]]}

    def times(ev, name):
        return [t for t, _ in ev[P[name]]]

    def first_after(ts, t):
        i = bisect.bisect_left(ts, t)
        return ts[i] if i < len(ts) else None

    def last_before(ts, t):
        i = bisect.bisect_right(ts, t) - 1
        return ts[i] if i >= 0 else None

    def cumulative(ev, name):
        """First time a cumulative key (ops done) reached each value: (keys, times)."""
        ks, ts, top = [], [], -1
        for t, k in ev[P[name]]:
            if k > top:
                ks.append(k)
                ts.append(t)
                top = k
        return ks, ts

    def reached(cum, s):
        ks, ts = cum
        i = bisect.bisect_left(ks, s)
        return ts[i] if i < len(ks) else None

    admitted, answered = by_key(A, "admitted"), by_key(A, "answered")
    frame, handed, took = by_key(A, "frame"), by_key(A, "handed"), by_key(A, "writer_took")
    decoded = by_key(B, "frame_decoded")
    nbd_reads = [t for t, k in A[P["nbd_read"]] if k > 0]
    a_sends, b_recvs = times(A, "udp_send"), times(B, "udp_recv")
    ack_handed, ack_took = cumulative(B, "ack_handed"), cumulative(B, "ack_writer_took")
    ack_decoded = cumulative(A, "ack_decoded")

    # Requests and frames are numbered in the same order on one NBD
    # connection that only writes: the n-th request admitted is the n-th
    # frame. Checked: as many frames as requests over the whole recording
    # (a request without a frame, such as a read, a write answered while
    # Ahead or refused, or a frame without a request, such as a resync's,
    # would shift every later pair), and each frame made after its
    # request's admission.
    reqs, seqs = sorted(admitted), sorted(frame)
    if len(reqs) != len(seqs):
        sys.exit(f"timeline.py: {len(reqs)} requests admitted but {len(seqs)} frames made: they do not pair up "
                 "(reads, more than one connection, writes answered without the peer, or a resync?)")
    n = len(reqs)
    pairs = list(zip(reqs, seqs))[n // 5: n - n // 5]
    off = [frame[s] - admitted[r] for r, s in pairs]
    if not off or sorted(off)[len(off) // 2] > 1_000_000 or min(off) < 0:
        sys.exit("timeline.py: requests and frames do not pair up (more than one connection, or reads?)")

    stages = ["NBD read -> admitted (the NBD thread's queue)",
              "admitted -> handed to the link (frames held for the read's last request)",
              "handed -> the link's writer takes it",
              "writer -> UDP send (QUIC packets, sealing)",
              "UDP send -> peer's UDP receive (the relay's delay, or loopback)",
              "peer: UDP receive -> frame decoded (opening, QUIC, the reader)",
              "peer: decoded -> applied, ack handed (its write and those before it)",
              "peer: ack handed -> its writer takes it",
              "ack: peer's writer -> decoded here (back through the relay)",
              "ack decoded -> answered (the core, the reply)"]
    rows = [[] for _ in stages]
    totals = []
    backwards = 0
    window = [1 << 63, 0]
    for r, s in pairs:
        t_adm, t_ans = admitted.get(r), answered.get(r)
        t_read = last_before(nbd_reads, t_adm)
        t_send = first_after(a_sends, took.get(s, 1 << 62))
        t_dec = decoded.get(s)
        t_recv = last_before(b_recvs, t_dec) if t_dec else None
        t_ah, t_at, t_ad = reached(ack_handed, s), reached(ack_took, s), reached(ack_decoded, s)
        chain = [t_read, t_adm, handed.get(s), took.get(s), t_send, t_recv, t_dec, t_ah, t_at, t_ad, t_ans]
        if None in chain or t_recv < t_send:
            continue
        steps = [(b - a) / 1000 for a, b in zip(chain, chain[1:])]
        if min(steps) < 0:
            backwards += 1
            continue
        for row, v in zip(rows, steps):
            row.append(v)
        totals.append((t_ans - t_read) / 1000)
        window = [min(window[0], t_read), max(window[1], t_ans)]
    if not totals:
        sys.exit("timeline.py: no write could be followed through both nodes")
    if backwards > len(pairs) // 100:
        sys.exit(f"timeline.py: {backwards} of {len(pairs)} writes would pass a stage backwards in time: "
                 "the marks do not pair up as this script assumes")
    def figures(v):
        m, p50, p90, p99 = stats(v)
        return {"mean_us": round(m, 1), "p50_us": round(p50, 1), "p90_us": round(p90, 1), "p99_us": round(p99, 1)}

    report = {"followed": len(totals),
              "stages": [dict(stage=name, **figures(row)) for name, row in zip(stages, rows)],
              "whole": figures(totals), "relay": []}
    if "--fio-clat-us" in args:
        clat = float(args[args.index("--fio-clat-us") + 1])
        report["client_clat_us"] = clat
        report["outside_us"] = round(clat - report["whole"]["mean_us"], 1)

    if R.get(P["relay_in_fwd"]) and R.get(P["relay_in_back"]):
        lo, hi = window

        def within(name):
            return [t for t, _ in R[P[name]] if lo <= t <= hi]

        def waited(sender_sends, reads):
            return [(t - last_before(sender_sends, t)) / 1000 for t in reads if last_before(sender_sends, t)]

        def to_next(receives, sends):
            return [(first_after(receives, t) - t) / 1000 for t in sends if first_after(receives, t)]

        b_sends, a_recvs = times(B, "udp_send"), times(A, "udp_recv")
        for name, v in [("forward: node's send -> relay read", waited(a_sends, within("relay_in_fwd"))),
                        ("forward: relay send -> peer's receive", to_next(b_recvs, within("relay_out_fwd"))),
                        ("back: peer's send -> relay read", waited(b_sends, within("relay_in_back"))),
                        ("back: relay send -> node's receive", to_next(a_recvs, within("relay_out_back")))]:
            if v:
                report["relay"].append(dict(leg=name, **figures(v)))

    if "--json" in args:
        print(json.dumps(report))
        return
    whole = report["whole"]["mean_us"]
    print(f"{report['followed']} writes followed through both nodes (the middle 60% of the recording)")
    print(f"{'stage':78s} {'mean':>7s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'share':>6s}")
    for r in report["stages"]:
        print(f"{r['stage']:78s} {r['mean_us']:7.1f} {r['p50_us']:7.1f} {r['p90_us']:7.1f} {r['p99_us']:7.1f} "
              f"{r['mean_us'] / whole * 100:5.1f}%")
    w = report["whole"]
    print(f"{'whole: NBD read -> answered':78s} {w['mean_us']:7.1f} {w['p50_us']:7.1f} {w['p90_us']:7.1f} {w['p99_us']:7.1f}")
    if "outside_us" in report:
        print(f"the client's mean completion latency {report['client_clat_us']:,.1f} us: {report['outside_us']:,.1f} us "
              "of it outside the nodes (the client and its NBD library, TCP both ways, the NBD thread's wake-up)")
    if report["relay"]:
        print("\nthe relay (each batch: from the start of the sender's UDP send to the relay's read, and from the relay's"
              " send to the receiver's next UDP receive)")
        for r in report["relay"]:
            print(f"  {r['leg']:76s} {r['mean_us']:7.1f} {r['p50_us']:7.1f} {r['p90_us']:7.1f} {r['p99_us']:7.1f}")

if __name__ == "__main__":
    main()

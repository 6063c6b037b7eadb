"""Issues 11 and 12: the flows' state is durable state. Reconciliation reports (open,
applied, closed), dead letters, a paused flow with its queue and the audit trail come back
after kill -9 (the journal), after a restart whose journal was deleted (the snapshot
alone), and on a new machine with an empty data dir (Redis alone). Apply, close and
POST /admin/snapshot are in the audit trail with by, holder and role."""
import json
import os
import shutil
import signal
import tempfile

import pytest

from harness import Server, expect_error, now_ms, uid
from test_snapshot import Redis

OPS = "fd-ops-token-0123456789abcdef"
_dir = tempfile.mkdtemp(prefix="atpd-bb-flows-durable-")
TOKENS = os.path.join(_dir, "tokens")
with open(TOKENS, "w") as f:
    f.write("%s ops alice\n" % OPS)
OWNERSHIP = os.path.join(_dir, "ownership.json")
with open(OWNERSHIP, "w") as f:
    json.dump({"fields": {"counts": {"writers": ["erp", "wms"], "owner": "inventory-control"}}}, f)
ARGS = ["--durability", "batch", "--tokens", TOKENS, "--ownership", OWNERSHIP]
SERVER_ARGS = ARGS
ASAN = True


@pytest.fixture(scope="module")
def redis():
    r = Redis()
    yield r
    r.kill()


def adjust(c, sku, loc, delta, flow="erp", **extra):
    return c.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location=loc, delta=delta,
                                          reason="received" if delta > 0 else "sale",
                                          source=flow, **extra))


def report(c, rid):
    r = c.get("/v1/reconciliations/" + rid)
    assert r.status == 200, r
    return r.data


def build_state(c, snapshot=False):
    """Every kind of flow state, and what a client reads of it."""
    loc = uid("L")
    a, b, gone, extra = uid("sku"), uid("sku"), uid("sku"), uid("sku")
    as_of = now_ms() - 20000
    for sku, n in ((a, 8), (b, 4), (extra, 3)):
        assert adjust(c, sku, loc, n, occurred_at=as_of - 1000).status == 200
    assert adjust(c, a, loc, -1, occurred_at=as_of + 1000).status == 200
    positions = [dict(sku=a, location=loc, on_hand=5), dict(sku=b, location=loc, on_hand=4),
                 dict(sku=gone, location=loc, on_hand=2)]
    ids = [uid("rec-open"), uid("rec-applied"), uid("rec-closed")]
    for rid in ids:
        r = c.post("/v1/reconciliations", dict(id=rid, source="wms", as_of=as_of,
                                               positions=positions))
        assert r.status == 201 and r.data["mismatched"] == 1, r
    r = c.post("/v1/reconciliations/%s/apply" % ids[1], {})
    assert r.status == 200 and r.data["apply"]["applied"] == 2, r
    r = c.post("/v1/reconciliations/%s/apply" % ids[2], dict(zero_missing_there=True))
    assert r.status == 200, r
    r = c.post("/v1/reconciliations/%s/close" % ids[2], dict(note="WMS recount agreed",
                                                            by="night-shift"))
    assert r.status == 200 and r.data["status"] == "closed", r
    # a rejection kept as a dead letter, one resolved
    dflow = uid("erp")
    for _ in range(2):
        expect_error(adjust(c, uid("sku"), loc, 0, flow=dflow), 400, "bad_request")
    dls = c.get("/v1/dead-letters", params=dict(flow=dflow)).data["dead_letters"]
    assert len(dls) == 2
    assert c.post("/v1/dead-letters/%s/resolve" % dls[0]["dl_id"],
                  dict(note="not ours")).status == 200
    # a paused flow with ops queued, order mattering (change_from)
    pflow, psku = uid("pos"), uid("sku")
    assert c.post("/v1/flows/%s/pause" % pflow, dict(reason="cutover")).status == 200
    for delta, before in ((5, 0), (3, 5)):
        r = adjust(c, psku, "L1", delta, flow=pflow, change_from=before)
        assert r.status == 202 and r.data["queued"] is True, r
    if snapshot:
        r = c.post("/admin/snapshot")
        assert r.status == 200, r
    state = read_state(c, ids, dflow, pflow)
    state["psku"] = psku
    assert [x["status"] for x in state["reports"]] == ["open", "applied", "closed"]
    assert state["flow"]["state"] == "paused" and state["flow"]["queued"] == 2
    return state


def read_state(c, ids, dflow, pflow):
    flows = {f["name"]: f for f in c.get("/v1/flows").data["flows"]}
    f = flows.get(pflow, {})
    listing = c.get("/v1/reconciliations", params=dict(limit=1000)).data["reconciliations"]
    return dict(
        ids=ids, dflow=dflow, pflow=pflow,
        reports=[report(c, rid) for rid in ids],
        listing=[x for x in listing if x["id"] in ids],
        dead_letters=c.get("/v1/dead-letters", params=dict(flow=dflow)).data["dead_letters"],
        flow={k: f.get(k) for k in ("state", "queued", "reason", "by")},
        audit=c.get("/v1/audit", params=dict(limit=1000)).data["entries"])


def check_state(c, want):
    got = read_state(c, want["ids"], want["dflow"], want["pflow"])
    for k in ("reports", "listing", "dead_letters", "flow", "audit"):
        assert got[k] == want[k], (k, got[k], want[k])
    # the queue itself came back, in order: resume applies both ops
    r = c.post("/v1/flows/%s/resume" % want["pflow"], {})
    assert r.status == 200 and r.data["drained"] == dict(applied=2, rejected=0), r
    assert c.pos(want["psku"], "L1")["on_hand"] == 8
    # the reports are live: the closed one refuses apply, the open one applies
    expect_error(c.post("/v1/reconciliations/%s/apply" % want["ids"][2], {}), 409, "conflict")
    r = c.post("/v1/reconciliations/%s/apply" % want["ids"][1], {})
    assert r.status == 200 and r.data.get("replayed") is True, r
    r = c.post("/v1/reconciliations/%s/close" % want["ids"][0], dict(note="done"))
    assert r.status == 200 and r.data["status"] == "closed", r


def test_flow_state_survives_kill_9(binary):
    srv = Server(binary=binary, args=ARGS)
    try:
        want = build_state(srv.client(token=OPS))
        srv.kill()
        srv.start()
        check_state(srv.client(token=OPS), want)
        # and once more, with the changes made since on top
        srv.kill()
        srv.start()
        c = srv.client(token=OPS)
        assert report(c, want["ids"][0])["status"] == "closed"
        problem = srv.stop()
        assert problem is None, problem
    finally:
        srv.kill()


def test_flow_state_survives_from_the_snapshot_alone(binary):
    srv = Server(binary=binary, args=ARGS)
    try:
        want = build_state(srv.client(token=OPS), snapshot=True)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0
        srv.stderr_f.close()
        shutil.rmtree(os.path.join(srv.data_dir, "journal"))
        srv.start()
        check_state(srv.client(token=OPS), want)
    finally:
        srv.kill()


def test_flow_state_restored_from_redis_into_an_empty_data_dir(binary, redis):
    redis.cli("FLUSHALL")
    args = ARGS + ["--redis", redis.url()]
    a = Server(binary=binary, args=args)
    b = None
    try:
        c = a.client(token=OPS)
        want = build_state(c)
        s = c.post("/admin/snapshot")
        assert s.status == 200 and s.data["redis"] == "pushed", s
        want["audit"] = c.get("/v1/audit", params=dict(limit=1000)).data["entries"]
        a.kill()  # the machine is gone; only Redis has its state
        b = Server(binary=binary, args=args)
        check_state(b.client(token=OPS), want)
    finally:
        a.kill()
        if b:
            b.kill()


def test_apply_close_and_snapshot_are_audited(binary):
    srv = Server(binary=binary, args=ARGS)
    try:
        c = srv.client(token=OPS)
        since = now_ms()
        want = build_state(c, snapshot=True)
        rid_applied, rid_closed = want["ids"][1], want["ids"][2]
        mine = [(e["action"], e["target"], e["by"], e["role"], e["token_holder"])
                for e in want["audit"] if e["at"] >= since and
                (e["action"].startswith("reconciliation.") or e["action"] == "snapshot")]
        assert mine == [
            ("reconciliation.apply", rid_applied, "alice", "ops", "alice"),
            ("reconciliation.apply", rid_closed, "alice", "ops", "alice"),
            ("reconciliation.close", rid_closed, "night-shift", "ops", "alice"),
            ("snapshot", "snapshot", "alice", "ops", "alice"),
        ], mine
        close = [e for e in want["audit"] if e["action"] == "reconciliation.close"][0]
        assert close["detail"] == "WMS recount agreed", close
        apply_ = [e for e in want["audit"] if e["action"] == "reconciliation.apply"][0]
        assert "applied=2" in apply_["detail"], apply_
        # a retried apply and a second close are replays: no new entry
        n = len(want["audit"])
        assert c.post("/v1/reconciliations/%s/apply" % rid_applied, {}).data["replayed"] is True
        assert c.post("/v1/reconciliations/%s/close" % rid_closed,
                      dict(note="again")).data["replayed"] is True
        assert len(c.get("/v1/audit", params=dict(limit=1000)).data["entries"]) == n
        # by names someone else on a snapshot; the filters find it
        assert c.post("/admin/snapshot", dict(by="night-shift")).status == 200
        got = c.get("/v1/audit", params=dict(action="snapshot", by="night-shift")).data
        assert [(e["by"], e["token_holder"]) for e in got["entries"]] == \
            [("night-shift", "alice")], got
    finally:
        srv.kill()


def test_a_report_larger_than_one_journal_chunk_survives(binary):
    """30,000 unmatched items take several item chunks (1 MiB each) in the journal."""
    srv = Server(binary=binary, args=ARGS)
    try:
        c = srv.client(token=OPS)
        rid, loc = uid("rec-big"), uid("L")
        lines = "".join("%s-%06d,%s,%d\n" % (rid, i, loc, i + 1) for i in range(30000))
        r = c.request("POST", "/v1/reconciliations", raw=("sku,location,on_hand\n" + lines).encode(),
                      content_type="text/csv",
                      params=dict(id=rid, source="wms", as_of=now_ms() - 1000))
        assert r.status == 201 and r.data["missing_here"] == 30000, r
        pages = [c.get("/v1/reconciliations/" + rid,
                       params=dict(items_from=k, items_limit=10000)).data["items"]
                 for k in (0, 10000, 20000)]
        srv.kill()
        srv.start()
        c = srv.client(token=OPS)
        for k, page in zip((0, 10000, 20000), pages):
            got = c.get("/v1/reconciliations/" + rid, params=dict(items_from=k, items_limit=10000))
            assert got.status == 200 and got.data["items"] == page, k
        assert report(c, rid)["items_total"] == 30000
    finally:
        srv.kill()


def test_a_torn_report_header_leaves_no_report(binary):
    """The header commits a report's item chunks: a tail cut inside it (after every
    chunk) restores no half report, and the chunks read are freed (ASan checks)."""
    srv = Server(binary=binary, args=ARGS)
    try:
        c = srv.client(token=OPS)
        kept, torn, loc = uid("rec-kept"), uid("rec-torn"), uid("L")
        for rid in (kept, torn):
            lines = "".join("%s-%05d,%s,1\n" % (rid, i, loc) for i in range(15000))
            r = c.request("POST", "/v1/reconciliations",
                          raw=("sku,location,on_hand\n" + lines).encode(),
                          content_type="text/csv",
                          params=dict(id=rid, source="wms", as_of=now_ms() - 1000))
            assert r.status == 201, r
        srv.kill()
        jdir = os.path.join(srv.data_dir, "journal")
        last = os.path.join(jdir, sorted(n for n in os.listdir(jdir) if n.endswith(".journal"))[-1])
        with open(last, "rb") as f:
            data = f.read()
        end = len(data.rstrip(b"\0"))  # the segment's data end: zeroes follow it
        with open(last, "r+b") as f:
            f.truncate(end - 40)  # inside the last record: the torn report's header
        srv.start()
        c = srv.client(token=OPS)
        assert report(c, kept)["items_total"] == 15000
        expect_error(c.get("/v1/reconciliations/" + torn), 404, "not_found")
        # the id is free again: the export is taken afresh
        r = c.post("/v1/reconciliations", dict(id=torn, source="wms", as_of=now_ms() - 1000,
                                               positions=[dict(sku=uid("s"), location=loc,
                                                               on_hand=1)]))
        assert r.status == 201 and "replayed" not in r.data, r
        problem = srv.stop()
        assert problem is None, problem
    finally:
        srv.kill()

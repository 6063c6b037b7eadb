"""Section 6.6: operator actions in the audit trail, with the token's holder and role."""
import os
import tempfile

from harness import Server, expect_error, formats, now_ms, uid

OPS = "ops-token-0123456789abcdef"
OPS2 = "ops-token-fedcba9876543210"
INTEGRATION = "int-token-0123456789abcdef"
_dir = tempfile.mkdtemp(prefix="atpd-bb-audit-")
TOKENS = os.path.join(_dir, "tokens")
with open(TOKENS, "w") as f:
    f.write("# token role holder\n%s ops alice\n%s ops\n%s integration erp-bridge\n"
            % (OPS, OPS2, INTEGRATION))
SERVER_ARGS = ["--tokens", TOKENS]


def entries(c, **params):
    r = c.get("/v1/audit", params=params)
    assert r.status == 200, r
    return r.data


@formats()
def test_each_action_is_recorded_with_holder_and_role(srv, fmt):
    ops = srv.client(fmt, token=OPS)
    integ = srv.client(fmt, token=INTEGRATION)
    flow, sku = uid("erp"), uid("sku")
    since = now_ms()
    # pause, by defaulting to the holder
    r = ops.post("/v1/flows/%s/pause" % flow, dict(reason="cutover"))
    assert r.status == 200 and r.data["by"] == "alice", r
    assert ops.post("/v1/flows/%s/resume" % flow, dict(by="night-shift")).status == 200
    # a rejection from the integration token, replayed and resolved by ops
    expect_error(integ.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L1", delta=0,
                                                    reason="received", source=flow)), 400, "bad_request")
    dl = ops.get("/v1/dead-letters", params=dict(flow=flow)).data["dead_letters"][0]["dl_id"]
    expect_error(ops.post("/v1/dead-letters/%s/replay" % dl, {}), 400, "bad_request")
    assert ops.post("/v1/dead-letters/%s/resolve" % dl, dict(note="not ours")).status == 200
    # a manual adjustment by an ops token is audited; the integration token's is not
    assert ops.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L1", delta=3,
                                            reason="correction", source="ops")).status == 200
    assert integ.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L2", delta=3,
                                              reason="received", source=flow)).status == 200
    mine = [e for e in entries(ops, since=since, limit=1000)["entries"]
            if e["target"] in (flow, dl) or e["target"].startswith(sku + "@")]
    got = [(e["action"], e["target"], e["by"], e["role"], e["token_holder"]) for e in mine]
    assert got == [
        ("flow.pause", flow, "alice", "ops", "alice"),
        ("flow.resume", flow, "night-shift", "ops", "alice"),
        ("dead_letter.replay", dl, "alice", "ops", "alice"),
        ("dead_letter.resolve", dl, "alice", "ops", "alice"),
        ("adjustment", sku + "@L1", "alice", "ops", "alice"),
    ], got
    assert mine[0]["detail"] == "cutover" and mine[3]["detail"] == "not ours", mine
    assert all(e["at"] >= since for e in mine)
    # filters and paging
    assert [e["action"] for e in entries(ops, action="flow.pause", since=since)["entries"]
            if e["target"] == flow] == ["flow.pause"]
    assert {e["by"] for e in entries(ops, by="night-shift")["entries"]} == {"night-shift"}
    page = entries(ops, since=since, limit=1)
    assert len(page["entries"]) == 1 and page["cursor"] is not None
    nxt = entries(ops, since=since, limit=1, cursor=page["cursor"])
    assert nxt["entries"][0]["seq"] > page["entries"][0]["seq"]
    # ops role only
    expect_error(integ.get("/v1/audit"), 403, "forbidden")
    expect_error(integ.post("/v1/flows/%s/pause" % flow, dict(by="x")), 403, "forbidden")
    # a token without a holder must name by
    anon = srv.client(fmt, token=OPS2)
    expect_error(anon.post("/v1/flows/%s/pause" % flow, {}), 400, "bad_request", "by")
    r = anon.post("/v1/flows/%s/pause" % flow, dict(by="bob"))
    assert r.status == 200, r
    [e] = [e for e in entries(ops, by="bob")["entries"] if e["target"] == flow]
    assert e["token_holder"] == "" and e["role"] == "ops", e


def test_bound_drops_the_oldest_and_counts_it(binary):
    srv = Server(binary=binary, args=["--audit-max", "2", "--durability", "none"])
    try:
        c = srv.client()
        for i in range(3):
            assert c.post("/v1/flows/f%d/pause" % i, dict(by="x")).status == 200
        got = [e["target"] for e in entries(c)["entries"]]
        assert got == ["f1", "f2"], got
        m = c.get("/metrics").body.decode()
        assert "atpd_audit_dropped_total 1" in m and "atpd_audit_entries 2" in m, m
    finally:
        problem = srv.stop()
        assert problem is None, problem

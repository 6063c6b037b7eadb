"""Section 6.4 on the single routes: pause, queue (202), 429 when full, resume in order,
and everything surviving kill -9."""
from harness import Server, expect_error, formats, uid


def flows(c):
    r = c.get("/v1/flows")
    assert r.status == 200, r
    return {f["name"]: f for f in r.data["flows"]}


def adj(c, sku, delta, flow, **extra):
    return c.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L1", delta=delta,
                                          reason="received", source=flow, **extra))


@formats()
def test_pause_queues_and_resume_applies_in_order(srv, fmt):
    c = srv.client(fmt)
    flow, other, sku = uid("erp"), uid("wms"), uid("sku")
    r = c.post("/v1/flows/%s/pause" % flow, dict(reason="cutover", by="alice"))
    assert r.status == 200 and r.data["state"] == "paused" and r.data["reason"] == "cutover", r
    # change_from makes order matter: each op only applies after the one before it
    for i, (delta, before) in enumerate([(5, 0), (3, 5), (-2, 8)]):
        r = adj(c, sku, delta, flow, change_from=before)
        assert r.status == 202 and r.data["queued"] is True and r.data["depth"] == i + 1, r
    r = c.post("/v1/reservations", dict(id=uid("r"), channel=flow,
                                        lines=[dict(sku=sku, location="L1", qty=1)]))
    assert r.status == 202, r
    # another flow is not held up
    assert adj(c, uid("sku"), 1, other).status == 200
    assert c.get("/v1/availability", params=dict(sku=sku, location="L1")).status == 404
    f = flows(c)[flow]
    assert f["state"] == "paused" and f["queued"] == 4 and f["by"] == "alice", f
    m = c.get("/metrics").body.decode()
    assert 'atpd_flow_paused{flow="%s"} 1' % flow in m and 'atpd_flow_queued{flow="%s"} 4' % flow in m
    # pausing again changes nothing
    assert c.post("/v1/flows/%s/pause" % flow, dict(by="bob")).data["by"] == "alice"
    r = c.post("/v1/flows/%s/resume" % flow, dict(by="alice"))
    assert r.status == 200 and r.data["flow"]["state"] == "running", r
    assert r.data["drained"] == dict(applied=4, rejected=0), r
    p = c.pos(sku, "L1")
    assert p["on_hand"] == 6 and p["reserved"] == 1, p
    f = flows(c)[flow]
    assert f["queued"] == 0 and f["applied"] == 4 and f["last_op_at"], f
    # running again: writes apply at once
    assert adj(c, sku, 1, flow).status == 200
    r = c.post("/v1/flows/%s/resume" % flow, dict(by="alice"))
    assert r.status == 200 and r.data["drained"] == dict(applied=0, rejected=0), r
    expect_error(c.post("/v1/flows/%s/resume" % uid("never"), dict(by="x")), 404, "not_found")


@formats()
def test_rejections_during_the_drain_become_dead_letters(srv, fmt):
    c = srv.client(fmt)
    flow, sku = uid("pos"), uid("sku")
    assert c.post("/v1/flows/%s/pause" % flow, dict(by="x")).status == 200
    assert adj(c, sku, 2, flow).status == 202
    assert adj(c, sku, 1, flow, change_from=7).status == 202  # will conflict
    r = c.post("/v1/flows/%s/resume" % flow, dict(by="x"))
    assert r.data["drained"] == dict(applied=1, rejected=1), r
    dls = c.get("/v1/dead-letters", params=dict(flow=flow)).data["dead_letters"]
    assert [d["error"]["code"] for d in dls] == ["conflict"], dls


def test_queue_full_is_429_with_retry_after(binary):
    srv = Server(binary=binary, args=["--flow-queue-max", "2", "--durability", "none"])
    try:
        c = srv.client()
        flow, sku = uid("erp"), uid("sku")
        assert c.post("/v1/flows/%s/pause" % flow, dict(by="x")).status == 200
        assert adj(c, sku, 1, flow).status == 202
        assert adj(c, sku, 1, flow).status == 202
        r = adj(c, sku, 1, flow)
        expect_error(r, 429, "too_many_requests")
        assert int(r.headers["retry-after"]) >= 1, r.headers
        assert c.post("/v1/flows/%s/resume" % flow, dict(by="x")).data["drained"]["applied"] == 2
        assert c.pos(sku, "L1")["on_hand"] == 2
    finally:
        problem = srv.stop()
        assert problem is None, problem


def restart(srv):
    try:
        srv.stderr_f.close()
    except Exception:  # noqa: BLE001
        pass
    srv.start()


def test_dead_letters_paused_queue_and_audit_survive_kill9(binary):
    srv = Server(binary=binary, args=["--durability", "batch"])
    try:
        c = srv.client()
        flow, sku = uid("erp"), uid("sku")
        expect_error(adj(c, sku, 0, flow), 400, "bad_request")
        dl = c.get("/v1/dead-letters", params=dict(flow=flow)).data["dead_letters"][0]["dl_id"]
        assert c.post("/v1/dead-letters/%s/resolve" % dl, dict(note="seen", by="carol")).status == 200
        assert c.post("/v1/flows/%s/pause" % flow, dict(reason="cutover", by="alice")).status == 200
        assert adj(c, sku, 5, flow, change_from=0).status == 202
        assert adj(c, sku, 2, flow, change_from=5).status == 202
        audit_before = c.get("/v1/audit").data["entries"]
        srv.kill()  # SIGKILL: only what was acknowledged durably may count
        restart(srv)
        c = srv.client()
        [d] = c.get("/v1/dead-letters", params=dict(flow=flow)).data["dead_letters"]
        assert d["dl_id"] == dl and d["status"] == "resolved" and d["note"] == "seen", d
        f = flows(c)[flow]
        assert f["state"] == "paused" and f["queued"] == 2 and f["reason"] == "cutover", f
        assert c.get("/v1/audit").data["entries"] == audit_before
        # new ids continue after the old ones
        flow2 = uid("wms")
        expect_error(adj(c, sku, 0, flow2), 400, "bad_request")
        [d2] = c.get("/v1/dead-letters", params=dict(flow=flow2)).data["dead_letters"]
        assert int(d2["dl_id"][3:]) > int(dl[3:]), (dl, d2)
        r = c.post("/v1/flows/%s/resume" % flow, dict(by="alice"))
        assert r.data["drained"] == dict(applied=2, rejected=0), r
        assert c.pos(sku, "L1")["on_hand"] == 7
        srv.kill()
        restart(srv)
        c = srv.client()
        assert flows(c)[flow]["state"] == "running" and flows(c)[flow]["queued"] == 0
        assert c.pos(sku, "L1")["on_hand"] == 7
        actions = [e["action"] for e in c.get("/v1/audit").data["entries"]]
        assert actions == ["dead_letter.resolve", "flow.pause", "flow.resume"], actions
    finally:
        problem = srv.stop()
        assert problem is None, problem


@formats()
def test_batch_ops_of_a_paused_flow_are_queued_and_applied_on_resume(srv, fmt):
    c = srv.client(fmt)
    flow, sku = uid("wms"), uid("sku")
    assert c.post("/v1/flows/%s/pause" % flow, dict(by="x")).status == 200
    ops = [dict(op="adjust", flow=flow, id=uid("a"), sku=sku, location="L1", delta=4,
                reason="received", change_from=0),
           dict(op="adjust", flow=flow, id=uid("a"), sku=sku, location="L1", delta=1,
                reason="received", change_from=4),
           dict(op="adjust", flow=uid("other"), id=uid("a"), sku=sku, location="L2", delta=1,
                reason="received")]
    r = c.post("/v1/batch", ops)
    assert r.status == 200 and r.data["queued"] == 2 and r.data["applied"] == 1, r
    assert flows(c)[flow]["queued"] == 2
    r = c.post("/v1/flows/%s/resume" % flow, dict(by="x"))
    assert r.data["drained"] == dict(applied=2, rejected=0), r
    assert c.pos(sku, "L1")["on_hand"] == 5

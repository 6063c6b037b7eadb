"""Section 11, "Availability out": the push of mapped positions' `available` to
Shopify by inventorySetQuantities, against the real bin/atpd and the fake
Shopify (tests/fake_shopify/server.js, which validates every document against
the Admin schema, enforces changeFromQuantity, idempotency keys and the cost
bucket, and injects throttles, 5xx and downtime).

Each test starts its own atpd (some kill and restart it) on a fake that is
reset first; items and locations get fresh Shopify ids per test."""
import json
import os
import random
import re
import signal
import time

import pytest

from harness import Server, uid
from shopify_fake import fake_shopify  # noqa: F401 - the module's fixture

TOKEN = "shpat_test"
SERVER_ARGS = []
# The tests that take `binary` run a second time against bin/atpd-asan.
ASAN = True
# The Shopify routes are checked against proto/openapi.yaml once it has them
# (the state half documents them).
with open(os.path.join(os.path.dirname(__file__), "..", "..", "proto", "openapi.yaml")) as _f:
    VALIDATE = "/v1/shopify/status" in _f.read()


def shop_id():
    return random.randint(2 ** 53 + 1, 2 ** 62)


def write_config(fake, tmp_path, pps=1000, fetch=False):
    cfg = tmp_path / "shopify.json"
    push = {"enabled": True, "points_per_second": pps}
    if fetch:
        push["fetch_mappings"] = True
    cfg.write_text(json.dumps({
        "shop": "atpd-test.myshopify.com", "api_version": "2026-10",
        "admin_url": fake.admin_url, "webhook_secrets": ["s1"], "push": push}))
    return cfg


def start_atpd(fake, tmp_path, pps=1000, binary=None, extra=(), fetch=False, env=None):
    cfg = write_config(fake, tmp_path, pps, fetch)
    args = ["--durability", "batch", "--shopify", str(cfg)] + list(extra)
    return Server(binary=binary, args=args, env=dict(env or {}, ATPD_SHOPIFY_TOKEN=TOKEN))


def stop(srv):
    problem = srv.stop()
    assert problem is None, problem


def mapping(c, items, locations):
    """items: [(sku, item_id)], locations: [(location, shopify_location_id)]."""
    r = c.put("/v1/shopify/mappings", {
        "items": [{"sku": s, "variant_id": shop_id(), "inventory_item_id": i} for s, i in items],
        "locations": [{"location": l, "shopify_location_id": g} for l, g in locations]})
    assert r.status == 200, r


def batch_adjust(c, changes, chunk=5000):
    """changes: [(sku, location, delta)], applied in order."""
    for i in range(0, len(changes), chunk):
        ops = [dict(op="adjust", flow="erp", id=uid("adj"), sku=s, location=l, delta=d,
                    reason="received") for s, l, d in changes[i:i + chunk]]
        body = "\n".join(json.dumps(o) for o in ops).encode()
        r = c.post("/v1/batch", raw=body, content_type="application/x-ndjson")
        assert r.status == 200 and r.data["applied"] == len(ops), r


def wait_for(pred, timeout=20.0, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def push_status(c):
    r = c.get("/v1/shopify/status")
    assert r.status == 200, r
    return r.data["push"]


def pushes(fake, since=0):
    return [e for e in fake.log(since) if e.get("operation") == "AtpdPush"]


def quantities(entry):
    return entry["variables"]["input"]["quantities"]


def gid_num(g):
    return int(g.rsplit("/", 1)[-1])


def wait_levels(fake, want, timeout=20.0):
    """want: {(item, loc): qty}."""
    def ok():
        have = fake.levels()
        return all(have.get(k) == v for k, v in want.items())
    try:
        wait_for(ok, timeout, "Shopify's levels")
    except AssertionError:
        have = fake.levels()
        bad = {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v}
        raise AssertionError("levels (want, have) differ at %d positions, e.g. %r" % (
            len(bad), list(bad.items())[:5]))


@pytest.fixture
def fake(fake_shopify):  # noqa: F811 - the imported fixture
    fake_shopify.reset()
    fake_shopify.faults(throttle=0, status429=0, error5xx=0, slow_ms=0, slow_count=0, down=False)
    fake_shopify.config(restore_rate=1000, bucket_max=2000)
    return fake_shopify


# --- a change goes out ----------------------------------------------------------------

def test_position_mapped_after_its_last_change_is_pushed(fake, tmp_path, binary):
    """Stock counted before the SKU or the store was mapped reaches Shopify when
    the mapping comes, without waiting for the next change; after a restart the
    replayed mappings walk the positions again, which costs no call when
    Shopify already holds atpd's values."""
    item, loc, loc2 = shop_id(), shop_id(), shop_id()
    sku = uid("sku")
    fake.set_levels([(item, loc, 2), (item, loc2, 0)])
    srv = start_atpd(fake, tmp_path, binary=binary)
    try:
        c = srv.client(validate=VALIDATE)
        c.adjust(sku, "L1", 40)
        c.adjust(sku, "L2", 9)
        time.sleep(0.3)
        assert not pushes(fake), "nothing is mapped yet"
        mapping(c, [(sku, item)], [("L1", loc)])
        wait_levels(fake, {(item, loc): 40})
        # A location mapped later: its positions of mapped SKUs go out too.
        mapping(c, [], [("L2", loc2)])
        wait_levels(fake, {(item, loc2): 9})
        calls = len(pushes(fake))
        # After kill -9 the mappings replay and the walk runs again at start:
        # what Shopify already holds settles without a call.
        srv.kill()
        walks = srv.stderr_text().count("mappings walk 1 done")  # the log appends
        srv.start()
        c = srv.client(validate=VALIDATE)
        wait_for(lambda: srv.stderr_text().count("mappings walk 1 done") > walks,
                 what="the walk at start")
        # The walk's entries wait (up to a second) for the durable feed to
        # show their version, then settle.
        wait_for(lambda: push_status(c)["pending"] == 0, timeout=5, what="the settle")
        assert len(pushes(fake)) == calls, pushes(fake)[calls:]
    finally:
        stop(srv)


def test_change_pushed_with_change_from_and_reference(fake, tmp_path, binary):
    item, loc = shop_id(), shop_id()
    sku = uid("sku")
    fake.set_levels([(item, loc, 7)])  # Shopify holds 7 before atpd knows anything
    srv = start_atpd(fake, tmp_path, binary=binary)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item)], [("L1", loc)])
        c.adjust(sku, "L1", 10)
        wait_levels(fake, {(item, loc): 10})
        log = fake.log()
        reads = [e for e in log if e.get("operation") == "AtpdLevels"]
        assert reads, "Shopify's figure must be read before the first push: %r" % log
        [p] = pushes(fake)
        assert p["outcome"] == "ok", p
        [q] = quantities(p)
        assert (gid_num(q["inventoryItemId"]), gid_num(q["locationId"])) == (item, loc), q
        assert q["quantity"] == 10 and q["changeFromQuantity"] == 7, q
        inp = p["variables"]["input"]
        assert inp["name"] == "available" and inp["reason"] == "correction", inp
        assert re.fullmatch(r"gid://atpd/Change/\d{20}", inp["referenceDocumentUri"]), inp
        assert re.fullmatch(r"atpd-[0-9a-f]{32}", p["idempotency_key"]), p
        # The next change goes from what atpd pushed, without a read.
        n = len(log)
        c.adjust(sku, "L1", 5)
        wait_levels(fake, {(item, loc): 15})
        later = fake.log(n)
        assert not [e for e in later if e.get("operation") == "AtpdLevels"], later
        [p2] = pushes(fake, n)
        assert quantities(p2)[0]["changeFromQuantity"] == 10, p2
        assert p2["variables"]["input"]["referenceDocumentUri"] > inp["referenceDocumentUri"]
        st = wait_for(lambda: (lambda s: s if s["pending"] == 0 else None)(push_status(c)))
        assert st["calls"] >= 3 and st["positions_pushed"] == 2, st
        assert st["points_spent"] > 0 and st["restore_rate"] == 1000, st
        assert st["cursor"] and st["lag_ms"] == 0, st
        # The same figures in /metrics.
        m = c.get("/metrics").body.decode()
        for name, v in (("calls_total", st["calls"]), ("positions_pushed_total", 2),
                        ("pending", 0), ("stale_retries_total", 0)):
            assert re.search(r"^atpd_shopify_push_%s %d$" % (name, v), m, re.M), (name, m[-3000:])
        # An unmapped position is not Shopify's: nothing goes out.
        n = len(fake.log())
        c.adjust(uid("unmapped"), "L1", 3)
        time.sleep(0.5)
        assert not pushes(fake, n)
    finally:
        stop(srv)


def test_many_changes_of_one_position_coalesce(fake, tmp_path):
    item, loc = shop_id(), shop_id()
    sku = uid("sku")
    fake.set_levels([(item, loc, 0)])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item)], [("L1", loc)])
        batch_adjust(c, [(sku, "L1", 1)] * 500)
        wait_levels(fake, {(item, loc): 500})
        time.sleep(0.3)
        calls = pushes(fake)
        assert len(calls) <= 10, "500 changes of one position took %d calls" % len(calls)
        assert calls[-1]["variables"]["input"]["quantities"][0]["quantity"] == 500
        assert all(e["outcome"] == "ok" for e in calls), calls
    finally:
        stop(srv)


def test_at_most_250_quantities_a_call(fake, tmp_path):
    loc = shop_id()
    items = [(uid("sku"), shop_id()) for _ in range(600)]
    fake.set_levels([(i, loc, 0) for _, i in items])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, items, [("L1", loc)])
        batch_adjust(c, [(s, "L1", 3) for s, _ in items])
        wait_levels(fake, {(i, loc): 3 for _, i in items})
        calls = pushes(fake)
        sizes = [len(quantities(e)) for e in calls]
        assert max(sizes) == 250 and len(calls) >= 3, sizes
        assert sum(sizes) == 600, sizes
        st = push_status(c)
        assert st["positions_pushed"] == 600, st
    finally:
        stop(srv)


# --- faults ---------------------------------------------------------------------------

def test_throttles_and_5xx_back_off_and_complete(fake, tmp_path):
    item, loc = shop_id(), shop_id()
    sku = uid("sku")
    fake.set_levels([(item, loc, 1)])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item)], [("L1", loc)])
        fake.faults(throttle=2, status429=1, error5xx=2)
        t0 = time.time()
        c.adjust(sku, "L1", 4)
        wait_levels(fake, {(item, loc): 4}, timeout=30)
        st = push_status(c)
        assert st["throttled"] >= 3, st
        assert st["errors"] >= 2 and st["last_error"], st
        # Backing off takes time: five refusals are not retried in a burst.
        log = fake.log()
        outcomes = [e["outcome"] for e in log]
        assert outcomes.count("throttled") == 2 and outcomes.count("status429") == 1, outcomes
        assert outcomes.count("error5xx") == 2, outcomes
        gaps = [b["at_ms"] - a["at_ms"] for a, b in zip(log, log[1:])]
        assert sum(gaps) >= 400, (gaps, time.time() - t0)
    finally:
        stop(srv)


def _paced_run(fake, tmp_path, pps, restore_rate=1000, bucket_max=2000, n=1500):
    """Pushes n positions once at full speed (atpd learns the levels), then
    restarts atpd with push.points_per_second pps against a fake restoring
    restore_rate into bucket_max, and pushes them all again: -> (calls,
    throttles) of the second round."""
    loc = shop_id()
    items = [(uid("sku"), shop_id()) for _ in range(n)]
    fake.set_levels([(i, loc, 0) for _, i in items])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, items, [("L1", loc)])
        batch_adjust(c, [(s, "L1", 1) for s, _ in items])
        wait_levels(fake, {(i, loc): 1 for _, i in items}, timeout=60)
        wait_for(lambda: push_status(c)["pending"] == 0, what="nothing pending")
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0
        srv.stderr_f.close()
        write_config(fake, tmp_path, pps)
        fake.config(restore_rate=restore_rate, bucket_max=bucket_max)
        srv.start()
        c = srv.client(validate=VALIDATE)
        n0, throttled0 = len(fake.log()), fake.state()["throttled"]
        batch_adjust(c, [(s, "L1", 1) for s, _ in items])
        wait_levels(fake, {(i, loc): 2 for _, i in items}, timeout=60)
        calls = pushes(fake, n0)
        return calls, fake.state()["throttled"] - throttled0
    finally:
        stop(srv)


def check_paced(calls, throttled, banked):
    """Calls of 10 points at 20 points/s: one every 0.5 s once the `banked`
    calls the bucket held at the start are spent."""
    assert throttled <= 1, throttled
    assert all(e["outcome"] == "ok" for e in calls), calls
    assert sum(len(quantities(e)) for e in calls) == 1500
    span = calls[-1]["at_ms"] - calls[0]["at_ms"]
    assert len(calls) >= 6 and span >= (len(calls) - banked) * 500 - 100, (len(calls), span)


def test_paced_by_atpds_share_of_the_budget(fake, tmp_path):
    # 20 points/s of atpd's own: a 10-point call every half second at most,
    # although Shopify's bucket would allow them all at once.
    calls, throttled = _paced_run(fake, tmp_path, pps=20)
    check_paced(calls, throttled, banked=2)


def test_paced_by_the_bucket_shopify_reports(fake, tmp_path):
    # Shopify restores 20 points/s into a 30-point bucket: atpd reads that
    # from throttleStatus and waits for it instead of running into throttles.
    calls, throttled = _paced_run(fake, tmp_path, pps=1000, restore_rate=20, bucket_max=30)
    check_paced(calls, throttled, banked=3)


def test_reads_fit_a_bucket_smaller_than_a_full_read(fake, tmp_path):
    # A read of 25 levels costs 75 points; this bucket holds 30. After the
    # first throttle tells it so, atpd reads fewer levels a query.
    fake.config(restore_rate=300, bucket_max=30)
    loc = shop_id()
    items = [(uid("sku"), shop_id()) for _ in range(60)]
    fake.set_levels([(i, loc, 5) for _, i in items])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, items, [("L1", loc)])
        batch_adjust(c, [(s, "L1", 1) for s, _ in items])
        wait_levels(fake, {(i, loc): 1 for _, i in items}, timeout=30)
        assert fake.state()["throttled"] <= 2, fake.state()
        reads = [e for e in fake.log() if e.get("operation") == "AtpdLevels" and
                 e["outcome"] == "ok"]
        assert reads and all(e["requested_cost"] <= 30 for e in reads), reads
    finally:
        stop(srv)


def test_stale_change_from_is_read_again_and_retried(fake, tmp_path):
    item, loc = shop_id(), shop_id()
    sku = uid("sku")
    fake.set_levels([(item, loc, 2)])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item)], [("L1", loc)])
        c.adjust(sku, "L1", 5)
        wait_levels(fake, {(item, loc): 5})
        # Someone else changes Shopify's figure: atpd's changeFrom is stale.
        fake.set_levels([(item, loc, 42)])
        n = len(fake.log())
        c.adjust(sku, "L1", 1)
        wait_levels(fake, {(item, loc): 6})
        later = fake.log(n)
        outs = [(e.get("operation"), e["outcome"]) for e in later]
        # Refused stale, Shopify's figure read, the call rebuilt from it.
        assert outs == [("AtpdPush", "stale"), ("AtpdLevels", "ok"), ("AtpdPush", "ok")], outs
        last = pushes(fake, n)[-1]
        assert quantities(last)[0]["changeFromQuantity"] == 42, last
        st = push_status(c)
        assert st["stale_retries"] == 1, st
    finally:
        stop(srv)


def test_kill9_during_a_push_no_loss_no_double_apply(fake, tmp_path, binary):
    loc = shop_id()
    items = [(uid("sku"), shop_id()) for _ in range(20)]
    fake.set_levels([(i, loc, 0) for _, i in items])
    srv = start_atpd(fake, tmp_path, binary=binary)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, items, [("L1", loc)])
        batch_adjust(c, [(s, "L1", 1) for s, _ in items])  # atpd learns the levels
        wait_levels(fake, {(i, loc): 1 for _, i in items})
        wait_for(lambda: push_status(c)["pending"] == 0, what="nothing pending")
        # The next call hangs in Shopify, which applies it; atpd dies meanwhile,
        # after more changes of half the positions.
        fake.faults(slow_ms=3000, slow_count=1)
        n = len(fake.log())
        batch_adjust(c, [(s, "L1", 7) for s, _ in items])
        wait_for(lambda: fake.state()["calls"] > n, what="the slow call")
        batch_adjust(c, [(s, "L1", 1) for s, _ in items[:10]])
        time.sleep(0.3)
        srv.kill()
        # The fake finishes (and applies) the call after its 3 s.
        first = wait_for(lambda: pushes(fake, n), timeout=10, what="the slow call's end")
        assert len(first) == 1 and first[0]["outcome"] == "ok", first
        srv.stderr_f.close()
        srv.start()
        want = {(i, loc): 9 if k < 10 else 8 for k, (_, i) in enumerate(items)}
        wait_levels(fake, want)
        c = srv.client(validate=VALIDATE)
        wait_for(lambda: push_status(c)["pending"] == 0, what="nothing pending")
        after = pushes(fake, n)
        # Each value was set by one call that applied: the call cut by the
        # kill is sent again first with its key (a replay), then the newer
        # values go from what it set.
        applied = {}
        for e in after:
            if e["outcome"] != "ok":
                continue
            for q in quantities(e):
                k = (gid_num(q["inventoryItemId"]), q["quantity"])
                applied[k] = applied.get(k, 0) + 1
        assert all(v == 1 for v in applied.values()), (applied, after)
        assert all(e["outcome"] in ("ok", "replay", "stale") for e in after), after
        replays = [e for e in after if e["outcome"] == "replay"]
        assert replays and replays[0]["idempotency_key"] == first[0]["idempotency_key"], after
        assert fake.state()["idempotent_replays"] >= 1
    finally:
        stop(srv)


def test_clean_restart_resumes_from_the_durable_cursor(fake, tmp_path):
    loc = shop_id()
    items = [(uid("sku"), shop_id()) for _ in range(5)]
    fake.set_levels([(i, loc, 2) for _, i in items])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, items, [("L1", loc)])
        batch_adjust(c, [(s, "L1", 3) for s, _ in items])
        wait_levels(fake, {(i, loc): 3 for _, i in items})
        wait_for(lambda: push_status(c)["pending"] == 0, what="nothing pending")
        cursor = push_status(c)["cursor"]
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0
        srv.stderr_f.close()
        n = len(fake.log())
        srv.start()
        c = srv.client(validate=VALIDATE)
        time.sleep(1.0)
        # Nothing is sent again: the cursor and the levels are durable.
        assert fake.log(n) == [], fake.log(n)
        assert push_status(c)["cursor"] >= cursor
        c.adjust(items[0][0], "L1", 1)
        wait_levels(fake, {(items[0][1], loc): 4})
        later = fake.log(n)
        assert [e["operation"] for e in later] == ["AtpdPush"], later
        assert quantities(later[0])[0]["changeFromQuantity"] == 3, later
    finally:
        stop(srv)


def test_cursor_survives_a_snapshot_and_kill9(fake, tmp_path, binary):
    loc = shop_id()
    items = [(uid("sku"), shop_id()) for _ in range(4)]
    fake.set_levels([(i, loc, 0) for _, i in items])
    srv = start_atpd(fake, tmp_path, binary=binary)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, items, [("L1", loc)])
        batch_adjust(c, [(s, "L1", 2) for s, _ in items])
        wait_levels(fake, {(i, loc): 2 for _, i in items})
        wait_for(lambda: push_status(c)["pending"] == 0, what="nothing pending")
        time.sleep(0.3)  # the cursor record is written within 100 ms
        r = c.post("/admin/snapshot")
        assert r.status == 200, r
        c.adjust(items[0][0], "L1", 1)
        wait_levels(fake, {(items[0][1], loc): 3})
        wait_for(lambda: push_status(c)["pending"] == 0, what="nothing pending")
        cursor = push_status(c)["cursor"]
        time.sleep(0.3)
        srv.kill()
        srv.stderr_f.close()
        n = len(fake.log())
        srv.start()
        c = srv.client(validate=VALIDATE)
        time.sleep(1.0)
        assert fake.log(n) == [], fake.log(n)  # nothing sent again
        assert push_status(c)["cursor"] >= cursor
        c.adjust(items[1][0], "L1", 5)
        wait_levels(fake, {(items[1][1], loc): 7})
        assert [quantities(e)[0]["changeFromQuantity"] for e in pushes(fake, n)] == [2]
    finally:
        stop(srv)


def test_shopify_down_then_back_sends_newest_values_only(fake, tmp_path):
    loc = shop_id()
    items = [(uid("sku"), shop_id()) for _ in range(20)]
    fake.set_levels([(i, loc, 0) for _, i in items])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, items, [("L1", loc)])
        c.adjust(items[0][0], "L1", 1)  # the levels are read: atpd knows them
        wait_levels(fake, {(items[0][1], loc): 1})
        fake.faults(down=True)
        n = len(fake.log())
        for r in range(30):
            batch_adjust(c, [(s, "L1", 1) for s, _ in items])
        st = wait_for(lambda: (lambda s: s if s["errors"] >= 2 else None)(push_status(c)),
                      timeout=20, what="errors while down")
        assert st["pending"] == 20 and st["lag_ms"] > 0, st
        fake.faults(down=False)
        want = {(i, loc): 30 for _, i in items}
        want[(items[0][1], loc)] = 31
        wait_levels(fake, want, timeout=30)
        time.sleep(0.3)
        sent = [e for e in pushes(fake, n) if e["outcome"] == "ok"]
        assert len(sent) == 1, "the backlog went out, not the newest values: %r" % sent
        assert sorted(q["quantity"] for q in quantities(sent[0])) == sorted(want.values())
    finally:
        stop(srv)


# --- mappings fetched from Shopify -------------------------------------------------------

def test_mappings_fetched_from_shopify_in_pages(fake, tmp_path):
    variants = [{"variant_id": shop_id(), "sku": uid("sku"), "inventory_item_id": shop_id()}
                for _ in range(300)]
    variants.append({"variant_id": shop_id(), "sku": None, "inventory_item_id": shop_id()})
    store = {"id": shop_id(), "name": "Store-%s" % uid("s")}
    fake.catalog(variants=variants, locations=[store])
    fake.set_levels([(v["inventory_item_id"], store["id"], 0) for v in variants])
    srv = start_atpd(fake, tmp_path, fetch=True)
    try:
        c = srv.client(validate=VALIDATE)
        v = variants[280]  # on the second page
        wait_for(lambda: c.get("/v1/shopify/mappings", params={"sku": v["sku"]}).status == 200,
                 what="the fetched mapping")
        ops = [e.get("operation") for e in fake.log()]
        assert ops.count("AtpdLocations") == 1 and ops.count("AtpdVariants") == 2, ops
        c.adjust(v["sku"], store["name"], 4)  # the atpd location is the Shopify name
        wait_levels(fake, {(v["inventory_item_id"], store["id"]): 4})
        st = push_status(c)
        assert st["positions_pushed"] == 1 and st["errors"] == 0, st
    finally:
        stop(srv)


def test_fetched_mappings_sync_positions_atpd_already_holds(fake, tmp_path):
    # The positions exist before Shopify has the variants; a restart fetches
    # the mappings and pushes them without any further change.
    store = {"id": shop_id(), "name": "Store-%s" % uid("s")}
    variants = [{"variant_id": shop_id(), "sku": uid("sku"), "inventory_item_id": shop_id()}
                for _ in range(3)]
    srv = start_atpd(fake, tmp_path, fetch=True)
    try:
        c = srv.client(validate=VALIDATE)
        for k, v in enumerate(variants):
            c.adjust(v["sku"], store["name"], 10 + k)
        c.adjust(variants[0]["sku"], "elsewhere", 99)  # a location Shopify does not have
        time.sleep(0.3)
        assert not pushes(fake)
        fake.catalog(variants=variants, locations=[store])
        fake.set_levels([(variants[0]["inventory_item_id"], store["id"], 10)] +
                        [(v["inventory_item_id"], store["id"], 0) for v in variants[1:]])
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0
        srv.stderr_f.close()
        srv.start()
        c = srv.client(validate=VALIDATE)
        wait_levels(fake, {(v["inventory_item_id"], store["id"]): 10 + k
                           for k, v in enumerate(variants)})
        # The one already at Shopify's figure went without a call.
        sent = [q for e in pushes(fake) for q in quantities(e)]
        assert sorted(q["quantity"] for q in sent) == [11, 12], sent
    finally:
        stop(srv)


# --- a burst at Shopify Plus's restore rate --------------------------------------------------

def test_burst_of_100000_changes_at_1000_points_per_second(fake, tmp_path):
    locs = [("L%d" % k, shop_id()) for k in range(10)]
    items = [(uid("sku"), shop_id()) for _ in range(200)]
    fake.set_levels([(i, g, 0) for _, i in items for _, g in locs])
    srv = start_atpd(fake, tmp_path, extra=["--access-log", "off"])
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, items, locs)
        rng = random.Random(14)
        want = {}
        changes = []
        positions = [(s, i, l, g) for s, i in items for l, g in locs]
        for _ in range(100000):
            s, i, l, g = positions[rng.randrange(len(positions))]
            changes.append((s, l, 1))
            want[(i, g)] = want.get((i, g), 0) + 1
        t0 = time.time()
        batch_adjust(c, changes, chunk=10000)
        wait_levels(fake, want, timeout=60)
        took = time.time() - t0
        st = fake.state()
        assert st["throttled"] <= 3, st
        st = wait_for(lambda: (lambda s: s if s["pending"] == 0 else None)(push_status(c)))
        assert st["positions_pushed"] >= len(want), st
        assert took < 60, took
    finally:
        stop(srv)


# --- answers the fake gives only when asked (fake.canned) -----------------------------

def user_error_answer(field, code, message="refused"):
    return {"data": {"inventorySetQuantities": {
        "inventoryAdjustmentGroup": None,
        "userErrors": [{"field": field, "message": message, "code": code}]}}}


def test_user_error_naming_no_quantity_backs_off_then_drops(fake, tmp_path):
    """A userError on the call as a whole (not a quantity, not stale) is not
    re-sent in a tight loop: it backs off, and after three identical answers
    the call's positions are dropped (counted, named) so the rest moves on."""
    item, loc, item2 = shop_id(), shop_id(), shop_id()
    sku, sku2 = uid("sku"), uid("sku")
    fake.set_levels([(item, loc, 0), (item2, loc, 0)])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item), (sku2, item2)], [("L1", loc)])
        fake.canned("AtpdPush", user_error_answer(["input", "reason"], "INVALID_REASON"),
                    count=-1)
        c.adjust(sku, "L1", 3)
        wait_for(lambda: "dropped" in push_status(c)["last_error"], timeout=20,
                 what="the drop")
        wait_for(lambda: push_status(c)["pending"] == 0, what="nothing pending")
        time.sleep(0.5)
        sent = [e for e in pushes(fake) if e["outcome"] == "canned"]
        assert len(sent) == 3, len(sent)
        gaps = [b["at_ms"] - a["at_ms"] for a, b in zip(sent, sent[1:])]
        assert min(gaps) >= 100, gaps  # backed off, with jitter over 200 ms and up
        st = push_status(c)
        assert st["errors"] >= 3 and "INVALID_REASON" in st["last_error"], st
        fake.canned()
        c.adjust(sku2, "L1", 7)
        wait_levels(fake, {(item2, loc): 7})
        assert fake.level(item, loc) == 0  # dropped: no level change
    finally:
        stop(srv)


def test_idempotency_error_at_top_level_changes_the_key(fake, tmp_path):
    item, loc = shop_id(), shop_id()
    sku = uid("sku")
    fake.set_levels([(item, loc, 0)])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item)], [("L1", loc)])
        fake.canned("AtpdPush", {"errors": [{
            "message": "A request with this idempotency key is already being processed",
            "extensions": {"code": "IDEMPOTENCY_CONCURRENT_REQUEST"}}]}, count=1)
        c.adjust(sku, "L1", 5)
        wait_levels(fake, {(item, loc): 5})
        sent = pushes(fake)
        assert [e["outcome"] for e in sent] == ["canned", "ok"], sent
        assert sent[0]["variables"]["key"] != sent[1]["variables"]["key"], sent
    finally:
        stop(srv)


@pytest.mark.parametrize("status", [
    {"maximumAvailable": 2000, "currentlyAvailable": -1e12, "restoreRate": 100},
    {"maximumAvailable": 2000, "currentlyAvailable": 0, "restoreRate": 1e-6},
], ids=["available_-1e12", "rate_1e-6"])
def test_wild_throttle_status_does_not_park_the_push(fake, tmp_path, status):
    """throttleStatus figures out of range are not believed: the next change
    goes out within seconds, not years."""
    item, loc = shop_id(), shop_id()
    sku = uid("sku")
    fake.set_levels([(item, loc, 0)])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item)], [("L1", loc)])
        fake.canned("AtpdPush", {
            "data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": None,
                                                "userErrors": []}},
            "extensions": {"cost": {"requestedQueryCost": 10, "actualQueryCost": 10,
                                    "throttleStatus": status}}}, count=1)
        c.adjust(sku, "L1", 2)
        wait_for(lambda: any(e["outcome"] == "canned" for e in pushes(fake)),
                 what="the canned answer")
        c.adjust(sku, "L1", 3)
        wait_levels(fake, {(item, loc): 5}, timeout=15)
    finally:
        stop(srv)


@pytest.mark.parametrize("body", [{}, {"data": None}, {"data": {}}],
                         ids=["empty", "data_null", "no_alias"])
def test_level_read_without_data_is_read_again(fake, tmp_path, body):
    """A 200 re-read that carries no figures is not "Shopify does not know
    the item": it backs off and reads again, and the push goes out."""
    item, loc = shop_id(), shop_id()
    sku = uid("sku")
    fake.set_levels([(item, loc, 1)])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item)], [("L1", loc)])
        fake.canned("AtpdLevels", body, count=2)
        c.adjust(sku, "L1", 6)
        wait_levels(fake, {(item, loc): 6}, timeout=15)
        reads = [e["outcome"] for e in fake.log() if e.get("operation") == "AtpdLevels"]
        assert reads == ["canned", "canned", "ok"], reads
        st = push_status(c)
        assert "does not know" not in st["last_error"], st
    finally:
        stop(srv)


def test_mapping_fetch_stops_on_a_repeated_page_cursor(fake, tmp_path):
    """hasNextPage true with the same endCursor again ends the phase (named
    in last_error) instead of fetching the same page for ever."""
    v = {"variant_id": shop_id(), "sku": uid("sku"), "inventory_item_id": shop_id()}
    store = {"id": shop_id(), "name": "Store-%s" % uid("s")}
    fake.catalog(variants=[v], locations=[])
    fake.set_levels([(v["inventory_item_id"], store["id"], 0)])
    fake.canned("AtpdLocations", {"data": {"locations": {
        "nodes": [{"id": "gid://shopify/Location/%d" % store["id"], "name": store["name"]}],
        "pageInfo": {"hasNextPage": True, "endCursor": "same"}}}}, count=-1)
    srv = start_atpd(fake, tmp_path, fetch=True)
    try:
        c = srv.client(validate=VALIDATE)
        wait_for(lambda: c.get("/v1/shopify/mappings", params={"sku": v["sku"]}).status == 200,
                 what="the fetched mapping")
        ops = [e.get("operation") for e in fake.log()]
        assert ops.count("AtpdLocations") == 2, ops  # the first page, then the repeat
        assert "cursor" in push_status(c)["last_error"]
        c.adjust(v["sku"], store["name"], 4)
        wait_levels(fake, {(v["inventory_item_id"], store["id"]): 4})
    finally:
        stop(srv)


def test_user_error_index_out_of_range_names_no_quantity(fake, tmp_path):
    """A userError naming quantity 2^32 names none of the call's (it used to
    wrap to 0 and drop the first quantity): the call backs off and goes again."""
    item, loc = shop_id(), shop_id()
    sku = uid("sku")
    fake.set_levels([(item, loc, 0)])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item)], [("L1", loc)])
        fake.canned("AtpdPush", user_error_answer(["input", "quantities", 2 ** 32, "quantity"],
                                                  "INVALID_QUANTITY"), count=1)
        c.adjust(sku, "L1", 5)
        wait_levels(fake, {(item, loc): 5}, timeout=15)
    finally:
        stop(srv)


def test_live_change_goes_before_a_resync_walk(fake, tmp_path):
    """Positions a mapping walk makes pending wait behind a live change (a
    checkout), however many there are: the first call after the mapping is
    the live change's push, not the walk's reads."""
    item, loc = shop_id(), shop_id()
    sku = uid("sku")
    others = [(uid("sku"), shop_id()) for _ in range(100)]
    fake.set_levels([(item, loc, 0)] + [(i, loc, 0) for _, i in others])
    srv = start_atpd(fake, tmp_path, pps=100)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item)], [("L1", loc)])
        c.adjust(sku, "L1", 50)
        wait_levels(fake, {(item, loc): 50})
        batch_adjust(c, [(s, "L1", 3) for s, _ in others])
        time.sleep(0.3)
        n = len(fake.log())
        mapping(c, others, [])
        c.adjust(sku, "L1", -1)
        wait_levels(fake, {(item, loc): 49}, timeout=30)
        later = [e for e in fake.log(n) if e.get("operation") in ("AtpdPush", "AtpdLevels")]
        first = later[0]
        assert first["operation"] == "AtpdPush", [e["operation"] for e in later]
        assert [gid_num(q["inventoryItemId"]) for q in quantities(first)] == [item], first
        wait_levels(fake, {(i, loc): 3 for _, i in others}, timeout=60)
    finally:
        stop(srv)


def test_durable_cursor_stays_below_a_change_made_during_a_call(fake, tmp_path):
    """A position that changes while its call is in flight is pending again
    for that change; entries made pending after it (during the same call)
    must not lift the durable cursor past it."""
    item, item2, loc = shop_id(), shop_id(), shop_id()
    sku, sku2 = uid("sku"), uid("sku")
    fake.set_levels([(item, loc, 0), (item2, loc, 0)])
    srv = start_atpd(fake, tmp_path)
    try:
        c = srv.client(validate=VALIDATE)
        mapping(c, [(sku, item), (sku2, item2)], [("L1", loc)])
        c.adjust(sku, "L1", 1)
        c.adjust(sku2, "L1", 1)
        wait_levels(fake, {(item, loc): 1, (item2, loc): 1})
        ok = {"data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": None,
                                                  "userErrors": []}}}
        fake.canned("AtpdPush", ok, count=1)  # the slow call "succeeds"
        fake.canned("AtpdPush", {"errors": "Service Unavailable"}, status=503, count=-1)
        fake.faults(slow_ms=1500, slow_count=1)
        n = len(fake.log())
        c.adjust(sku, "L1", 1)  # the slow call carries this
        time.sleep(0.5)
        c.adjust(sku, "L1", 1)  # during the call: the entry is pending again
        c.adjust(sku2, "L1", 1)  # made pending during the call, after it
        events = c.get("/v1/changes", params={"limit": 1000}).data["events"]
        mine = [e["sequence"] for e in events if e["type"] == "atpd.position.changed"
                and e["data"].get("position", {}).get("sku") == sku]
        again = mine[-1]
        wait_for(lambda: any(e["outcome"] == "canned" for e in fake.log(n)), what="the call")
        time.sleep(1.0)  # 503s back off; the cursor is written every 100 ms
        st = push_status(c)
        assert st["pending"] == 2, st
        assert int(st["cursor"]) < int(again), (st["cursor"], again)
    finally:
        stop(srv)


# --- the feed runs ahead of the push -----------------------------------------------------
# ATPD_TEST_SHOPIFY_PUSH_HOLD_FILE (test-only): while the file exists the push
# reads nothing from the feed; the feed goes on without it.

def hold_the_push(fake, tmp_path, env=None):
    """An atpd whose push holds (a mapped position pushed first, so the push
    holds a cursor); returns (srv, c, hold file, item, loc, sku)."""
    item, loc = shop_id(), shop_id()
    sku = uid("sku")
    fake.set_levels([(item, loc, 0)])
    hold = tmp_path / "hold"
    srv = start_atpd(fake, tmp_path, env=dict(env or {},
                                              ATPD_TEST_SHOPIFY_PUSH_HOLD_FILE=str(hold)))
    c = srv.client(validate=VALIDATE)
    mapping(c, [(sku, item)], [("L1", loc)])
    c.adjust(sku, "L1", 5)
    wait_levels(fake, {(item, loc): 5})
    wait_for(lambda: push_status(c)["pending"] == 0 and push_status(c)["cursor"],
             what="the push idle, with a cursor")
    hold.touch()
    time.sleep(0.2)  # a tick under way when the file came finishes
    return srv, c, hold, item, loc, sku


def test_expired_cursor_while_running_walks_every_position(fake, tmp_path):
    """The feed retained less than the push had read (its cursor expired
    while it ran): the changes in between are gone from the feed, so the push
    walks every mapped position again instead of going on from the oldest
    retained event and never pushing them."""
    srv, c, hold, item, loc, sku = hold_the_push(fake, tmp_path, env={
        "ATPD_TEST_JOURNAL_SEGMENT_BYTES": "4096", "ATPD_TEST_FEED_RETENTION_MS": "300"})
    try:
        cursor = push_status(c)["cursor"]
        c.adjust(sku, "L1", 3)  # 8: only in the feed the push does not read
        pad = uid("pad")  # unmapped: fills segments, then the snapshot trims them
        batch_adjust(c, [(pad, "L1", 1)] * 60)
        time.sleep(0.6)
        batch_adjust(c, [(pad, "L1", 1)] * 60)
        r = c.post("/admin/snapshot")
        assert r.status == 200, r
        r = c.get("/v1/changes", params={"after": cursor})
        assert r.status == 410, "the push's cursor %s must have expired: %r" % (cursor, r)
        hold.unlink()
        wait_levels(fake, {(item, loc): 8}, timeout=10)
        assert "resync" in push_status(c)["last_error"]
    finally:
        stop(srv)


def test_read_stopped_at_the_scan_cap_reads_on(fake, tmp_path):
    """More than the feed's scan cap (200,000 change records a read) of
    records the push skips (group changes), then a mapped change: the first
    read stops at the cap with no event, and the push must read on rather
    than wait for the next journal write to reach the change."""
    srv, c, hold, item, loc, sku = hold_the_push(fake, tmp_path)
    try:
        g = uid("g")
        ops = [dict(op="group", flow="ops", id=uid("g"), name=g,
                    locations=["L1"] if i % 2 else ["L1", "L2"]) for i in range(201000)]
        for k in range(0, len(ops), 5000):
            body = "\n".join(json.dumps(o) for o in ops[k:k + 5000]).encode()
            r = c.post("/v1/batch", raw=body, content_type="application/x-ndjson")
            assert r.status == 200 and r.data["applied"] == len(ops[k:k + 5000]), r
        c.adjust(sku, "L1", 3)  # 8, behind the 201,000 group changes
        hold.unlink()
        wait_levels(fake, {(item, loc): 8}, timeout=15)
    finally:
        stop(srv)

"""No oversell over HTTP: 8 clients race for 1 unit at a time of one position."""
import threading

from harness import check_position, uid

ASAN = True


def test_race_exactly_on_hand_granted(srv):
    c = srv.client()
    sku = uid("race")
    c.adjust(sku, "L1", 100)
    granted, refused, other = [], [], []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(k):
        cl = srv.client("msgpack" if k % 2 else "json")
        try:
            barrier.wait(10)
            for i in range(25):
                r = cl.reserve([dict(sku=sku, location="L1", qty=1)], rid="race-%s-%d-%d" % (sku, k, i))
                with lock:
                    if r.status == 201:
                        granted.append(r.data["id"])
                    elif r.status == 409 and r.error["code"] == "insufficient_stock":
                        refused.append(1)
                    else:
                        other.append(repr(r))
        except Exception as e:  # noqa: BLE001
            with lock:
                other.append(repr(e))
        finally:
            cl.close()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not other, "unexpected answers: %r" % other[:5]
    assert len(granted) == 100 and len(refused) == 100, \
        "granted %d, refused %d (want 100/100)" % (len(granted), len(refused))
    assert len(set(granted)) == 100
    p = c.pos(sku, "L1")
    check_position(p)
    assert (p["reserved"], p["available"], p["on_hand"]) == (100, 0, 100), p


def test_race_release_and_reserve(srv):
    """Releases and reservations interleaved: the books balance at the end."""
    c = srv.client()
    sku = uid("race2")
    c.adjust(sku, "L1", 20)
    errors = []

    def worker(k):
        cl = srv.client()
        try:
            for i in range(15):
                rid = "rr-%s-%d-%d" % (sku, k, i)
                r = cl.reserve([dict(sku=sku, location="L1", qty=2)], rid=rid)
                if r.status == 201 and i % 2 == 0:
                    rr = cl.post("/v1/reservations/%s/release" % rid, {})
                    assert rr.status == 200, rr
                elif r.status not in (201, 409):
                    errors.append(repr(r))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:5]
    p = c.pos(sku, "L1")
    check_position(p)
    assert p["reserved"] <= 20 and p["reserved"] % 2 == 0 and p["reserved"] + p["available"] == 20, p

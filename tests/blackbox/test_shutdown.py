"""Section 9: SIGTERM during traffic finishes in-flight requests and exits 0."""
import signal
import threading
import time

from harness import Conn, ConnClosed, Server, build_request, uid

ASAN = True


def test_sigterm_during_traffic_exits_0(binary):
    srv = Server(binary=binary)
    stop = threading.Event()
    bad, done = [], []
    lock = threading.Lock()

    def worker(k):
        sku = uid("sd")
        n = 0
        while not stop.is_set():
            try:
                c = srv.client("msgpack" if k % 2 else "json")
                while not stop.is_set():
                    r = c.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L1", delta=1,
                                                       reason="received", source="erp"))
                    if r.status != 200:
                        with lock:
                            bad.append(repr(r))
                    n += 1
            except (OSError, ConnClosed):
                # refused or closed between requests is fine once shutdown started;
                # a half-written answer would have raised something else
                time.sleep(0.01)
        with lock:
            done.append(n)
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    time.sleep(0.7)
    # an idle keep-alive connection and a pipelined burst in flight
    idle = Conn(srv.port)
    idle.send(build_request("GET", "/healthz"))
    idle.read_response()
    burst = Conn(srv.port)
    burst.send(build_request("GET", "/healthz") * 20)
    srv.proc.send_signal(signal.SIGTERM)
    try:
        rc = srv.proc.wait(15)
    except Exception:  # noqa: BLE001
        rc = None
    stop.set()
    for t in ts:
        t.join(10)
    got = 0
    try:
        while got < 20:
            assert burst.read_response().status == 200
            got += 1
    except ConnClosed:
        pass
    problem = srv.stop() if rc is None else None
    assert rc == 0, "exit status after SIGTERM: %r\n%s" % (rc, problem or srv.stderr_tail())
    assert sum(done) > 0, "no traffic was served before the signal"
    assert not bad, bad[:5]
    rep = srv.sanitizer_report()
    assert not rep, rep
    assert idle.wait_closed(2), "idle keep-alive connection not closed on shutdown"


def test_sigint_exits_0(binary):
    srv = Server(binary=binary)
    c = srv.client()
    c.adjust(uid("si"), "L1", 1)
    srv.proc.send_signal(signal.SIGINT)
    rc = srv.proc.wait(15)
    assert rc == 0, "exit status after SIGINT: %r\n%s" % (rc, srv.stderr_tail())


def test_sigterm_with_stalled_clients_exits_0(binary):
    """A partial head and a partial body do not hold shutdown forever."""
    srv = Server(binary=binary)
    head = Conn(srv.port)
    head.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    body = Conn(srv.port)
    body.send(b"POST /v1/adjustments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"id\":")
    time.sleep(0.2)
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        rc = srv.proc.wait(15)
    except Exception:  # noqa: BLE001
        rc = None
    problem = srv.stop() if rc is None else None
    assert rc == 0, "exit status after SIGTERM with stalled clients: %r (%.1f s)\n%s" % (
        rc, time.time() - t0, problem or srv.stderr_tail())
    assert head.wait_closed(1) and body.wait_closed(1)


def _wait(proc, timeout):
    try:
        return proc.wait(timeout)
    except Exception:  # noqa: BLE001
        return None


def test_sighup_usr1_usr2_are_harmless(binary):
    """SIGHUP (reopen the log: stderr, nothing to reopen), SIGUSR1 and SIGUSR2 are logged
    and the server keeps serving."""
    srv = Server(binary=binary)
    c = srv.client()
    sku = uid("hup")
    c.adjust(sku, "L1", 3)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        srv.proc.send_signal(sig)
        time.sleep(0.2)
        assert srv.alive(), "%s killed the server: exit %r\n%s" % (
            sig.name, srv.proc.returncode, srv.stderr_tail())
        assert c.pos(sku, "L1")["on_hand"] == 3
        assert sig.name in srv.stderr_text(), "no log line for %s" % sig.name
    problem = srv.stop()
    assert problem is None, problem


def test_sigquit_drains_and_exits_0(binary):
    srv = Server(binary=binary)
    idle = Conn(srv.port)
    idle.send(build_request("GET", "/healthz"))
    assert idle.read_response().status == 200
    srv.proc.send_signal(signal.SIGQUIT)
    rc = _wait(srv.proc, 15)
    problem = srv.stop() if rc is None else None
    assert rc == 0, "exit status after SIGQUIT: %r\n%s" % (rc, problem or srv.stderr_tail())
    assert idle.wait_closed(2)


def test_second_sigterm_hurries_the_drain(binary):
    """A client that never finishes its request holds the drain for the stop grace (5 s);
    a second SIGTERM closes it at once and the process exits 0."""
    srv = Server(binary=binary)
    body = Conn(srv.port)
    body.send(b"POST /v1/adjustments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"id\":")
    time.sleep(0.2)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert srv.alive(), "the drain ended before the stalled body was cut: %s" % srv.stderr_tail()
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    rc = _wait(srv.proc, 15)
    took = time.time() - t0
    problem = srv.stop() if rc is None else None
    assert rc == 0, "exit status after a second SIGTERM: %r\n%s" % (rc, problem or srv.stderr_tail())
    # Without the hurry the drain waits out the 5 s grace (4.7 s from here); exit
    # itself (journal flush, an ASan build's teardown) needs a moment of its own.
    assert took < 3.5, "a second SIGTERM took %.2f s to end the drain" % took
    assert body.wait_closed(1)

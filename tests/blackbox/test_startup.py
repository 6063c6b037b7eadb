"""Start-up: one atpd per HOST:PORT and per data dir (issue 9, item 1), the
durability warning and /readyz on a data dir that cannot be written (item 5)."""
import os
import signal
import socket
import subprocess
import tempfile
import time

from harness import ROOT, Conn, ConnClosed, Server, build_request, free_port, uid

ASAN = True

ATPD = os.path.join(ROOT, "bin", "atpd")


def exe(binary):
    """The binary under test (None: the release build)."""
    b = binary or os.environ.get("ATPD_BIN") or ATPD
    return b if os.path.isabs(b) else os.path.join(ROOT, b)


def run_second(binary, args, timeout=10):
    """Starts another atpd that must give up: returns (exit status, stderr)."""
    p = subprocess.run([binary] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stderr.decode("utf-8", "replace")


def get(port, path):
    c = Conn(port, timeout=5)
    c.send(build_request("GET", path))
    r = c.read_response()
    c.close()
    return r


def test_second_server_on_same_port_fails(binary):
    srv = Server(binary=binary)
    try:
        c = srv.client()
        sku = uid("port")
        c.adjust(sku, "L1", 10)
        other = tempfile.mkdtemp(prefix="atpd-bb-other-")
        rc, err = run_second(exe(binary), ["--listen", "127.0.0.1:%d" % srv.port, "--threads", "2",
                                      "--data-dir", os.path.join(other, "data")])
        assert rc != 0, "a second atpd on the same port started (exit %r): %s" % (rc, err)
        assert "address in use" in err.lower(), "no 'address in use' sentence: %r" % err
        # the first still serves, and every connection lands on it
        for _ in range(20):
            assert c.pos(sku, "L1")["on_hand"] == 10
            c.close()
    finally:
        problem = srv.stop()
    assert problem is None, problem


def test_second_server_on_wildcard_of_same_port_fails(binary):
    """0.0.0.0:P overlaps 127.0.0.1:P: the second start must fail too."""
    srv = Server(binary=binary)
    try:
        other = tempfile.mkdtemp(prefix="atpd-bb-other-")
        rc, err = run_second(exe(binary), ["--listen", "0.0.0.0:%d" % srv.port, "--threads", "2",
                                      "--data-dir", os.path.join(other, "data")])
        assert rc != 0, "atpd on 0.0.0.0 of a served port started (exit %r): %s" % (rc, err)
        assert "address in use" in err.lower(), err
        assert get(srv.port, "/healthz").status == 200
    finally:
        problem = srv.stop()
    assert problem is None, problem


def test_port_held_by_another_program_fails(binary):
    """A plain listener (no SO_REUSEPORT) on the port: refused as before."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        d = tempfile.mkdtemp(prefix="atpd-bb-")
        rc, err = run_second(exe(binary), ["--listen", "127.0.0.1:%d" % port, "--threads", "2",
                                      "--data-dir", os.path.join(d, "data")])
        assert rc != 0 and "address in use" in err.lower(), (rc, err)
    finally:
        s.close()


def test_port_zero_picks_a_free_port_with_many_loops(binary):
    d = tempfile.mkdtemp(prefix="atpd-bb-")
    p = subprocess.Popen([exe(binary), "--listen", "127.0.0.1:0", "--threads", "4", "--data-dir",
                          os.path.join(d, "data")], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port = None
        deadline = time.time() + 10
        line = b""
        while time.time() < deadline and port is None:
            line = p.stderr.readline()
            if b"listening on 127.0.0.1:" in line:
                port = int(line.split(b"listening on 127.0.0.1:")[1].split(b",")[0])
        assert port, "no listening line: %r" % line
        for _ in range(20):
            assert get(port, "/healthz").status == 200
        rc, err = run_second(exe(binary), ["--listen", "127.0.0.1:%d" % port, "--data-dir",
                                      os.path.join(d, "data2")])
        assert rc != 0 and "address in use" in err.lower(), (rc, err)
    finally:
        p.terminate()
        assert p.wait(15) == 0


def test_restart_on_same_port_after_stop(binary):
    """The port is free again once the first exited (connections in TIME_WAIT do not count)."""
    srv = Server(binary=binary)
    port = srv.port
    for _ in range(5):
        assert get(port, "/healthz").status == 200
    assert srv.stop() is None
    d = tempfile.mkdtemp(prefix="atpd-bb-")
    p = subprocess.Popen([exe(binary), "--listen", "127.0.0.1:%d" % port, "--threads", "2",
                          "--data-dir", os.path.join(d, "data")], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ok = False
        deadline = time.time() + 10
        while time.time() < deadline and p.poll() is None and not ok:
            try:
                ok = get(port, "/readyz").status == 200
            except (OSError, ConnClosed):
                time.sleep(0.05)
        assert ok, "restart on port %d failed: %r" % (port, p.stderr.read() if p.poll() is not None else "")
    finally:
        p.terminate()
        assert p.wait(15) == 0


def test_second_server_on_same_data_dir_fails(binary):
    srv = Server(binary=binary)
    try:
        rc, err = run_second(exe(binary), ["--listen", "127.0.0.1:%d" % free_port(), "--threads", "2",
                                      "--data-dir", srv.data_dir])
        assert rc != 0, "a second atpd on the same data dir started (exit %r): %s" % (rc, err)
        assert srv.data_dir in err, "the message must name the data dir: %r" % err
        assert str(srv.proc.pid) in err, "the message should name the holder's pid %d: %r" % (
            srv.proc.pid, err)
        assert get(srv.port, "/healthz").status == 200
    finally:
        problem = srv.stop()
    assert problem is None, problem


def test_data_dir_free_again_after_stop(binary):
    srv = Server(binary=binary)
    data_dir = srv.data_dir
    assert srv.proc.poll() is None
    srv.proc.terminate()
    assert srv.proc.wait(15) == 0
    p = subprocess.Popen([exe(binary), "--listen", "127.0.0.1:%d" % free_port(), "--threads", "1",
                          "--data-dir", data_dir], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        assert p.poll() is None, "restart on the same data dir failed: %r" % p.stderr.read()
    finally:
        p.terminate()
        assert p.wait(15) == 0


def test_durability_keeps_state_across_restart(binary):
    # issue 11 replaced the "memory only" warning with the journal
    for mode in ("batch", "always", "none"):
        srv = Server(binary=binary, args=["--durability", mode])
        try:
            sku = uid("dk")
            srv.client().adjust(sku, "L1", 7)
            assert srv.proc.send_signal(signal.SIGTERM) is None and srv.proc.wait(15) == 0
            srv.stderr_f.close()
            srv.start()
            r = srv.client().get("/v1/availability", params=dict(sku=sku, location="L1"))
            assert r.status == 200 and r.data["on_hand"] == 7, (mode, r)
            text = srv.stderr_text()
            assert not [ln for ln in text.splitlines() if '"level":"warn"' in ln and "memory" in ln]
        finally:
            problem = srv.stop()
        assert problem is None, problem


def _start_unready(binary, data_dir):
    port = free_port()
    p = subprocess.Popen([exe(binary), "--listen", "127.0.0.1:%d" % port, "--threads", "1",
                          "--data-dir", data_dir], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        assert p.poll() is None, "atpd exited %r: %r" % (p.returncode, p.stderr.read())
        try:
            return p, port, get(port, "/healthz")
        except (OSError, ConnClosed):
            time.sleep(0.05)
    raise AssertionError("atpd did not answer /healthz")


def test_readyz_503_when_data_dir_cannot_be_created(binary):
    d = tempfile.mkdtemp(prefix="atpd-bb-")
    blocker = os.path.join(d, "file")
    with open(blocker, "w") as f:
        f.write("not a directory\n")
    data_dir = os.path.join(blocker, "var")  # under a regular file: nobody can create it
    p, port, health = _start_unready(binary, data_dir)
    try:
        assert health.status == 200, health
        r = get(port, "/readyz")
        assert r.status == 503, "readyz with an uncreatable data dir: %r" % r
        msg = r.error["message"]
        assert data_dir in msg and msg.endswith("."), msg
        assert r.error["code"] == "unavailable", r.error
    finally:
        p.terminate()
        assert p.wait(15) == 0
        err = p.stderr.read().decode()
    assert data_dir in err and '"level":"warn"' in err, err


def test_readyz_503_when_data_dir_is_a_file(binary):
    d = tempfile.mkdtemp(prefix="atpd-bb-")
    data_dir = os.path.join(d, "var")
    with open(data_dir, "w") as f:
        f.write("a file, not a directory\n")
    p, port, _ = _start_unready(binary, data_dir)
    try:
        r = get(port, "/readyz")
        assert r.status == 503 and data_dir in r.error["message"], r
    finally:
        p.terminate()
        assert p.wait(15) == 0


def test_data_dir_parents_are_created(binary):
    d = tempfile.mkdtemp(prefix="atpd-bb-")
    data_dir = os.path.join(d, "a", "b", "var")
    p, port, _ = _start_unready(binary, data_dir)
    try:
        deadline = time.time() + 5
        while get(port, "/readyz").status != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert get(port, "/readyz").status == 200
        assert os.path.isdir(data_dir)
    finally:
        p.terminate()
        assert p.wait(15) == 0


def test_idempotency_max_bounds_the_ids_and_says_how_to_raise_it(binary):
    """--idempotency-max: a 10M-line import needs more than the default 4M ids
    kept for 24 h; the bound is a flag, full is a 429 naming it, and /metrics
    shows the capacity."""
    srv = Server(binary=binary, args=["--idempotency-max", "3", "--durability", "none"])
    try:
        c = srv.client()

        def adjust(i):
            return c.post("/v1/adjustments", dict(id="idmax-%d" % i, sku="IDMAX",
                                                  location="L1", delta=1,
                                                  reason="received", source="erp"))
        for i in range(3):
            r = adjust(i)
            assert r.status == 200, r
        r = adjust(3)
        assert r.status == 429, r
        assert "--idempotency-max" in r.data["error"]["message"], r
        r = adjust(0)  # a known id still replays
        assert r.status == 200, r
        assert c.position("IDMAX", "L1").data["on_hand"] == 3
        m = c.get("/metrics").body.decode()
        assert "atpd_idempotency_ids_max 3\n" in m, m
    finally:
        problem = srv.stop()
        assert problem is None, problem


def test_idempotency_max_refuses_a_bad_value(binary):
    for bad in ("0", "-1", "x", str((1 << 26) + 1)):
        rc, err = run_second(exe(binary), ["--idempotency-max", bad])
        assert rc == 2 and "--idempotency-max must be an integer" in err, (bad, rc, err)

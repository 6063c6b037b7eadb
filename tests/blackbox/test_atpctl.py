"""bin/atpctl and bin/atpd on first contact (issue 9, item 15): --help, --version,
exit codes, what a usage error says, and reserve's --channel."""
import json
import os
import re
import subprocess
import tempfile

from harness import ROOT, free_port, uid

ATPCTL = os.path.join(ROOT, "bin", "atpctl")
ATPD = os.path.join(ROOT, "bin", "atpd")
SERVER_ARGS = ["--ownership", os.path.join(ROOT, "deploy", "ownership.example.json")]


def ctl(*args, url=None):
    env = dict(os.environ)
    env.pop("ATPD_TOKEN", None)
    if url:
        env["ATPD_URL"] = url
    p = subprocess.run([ATPCTL] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=20, env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def url_of(srv):
    return "http://127.0.0.1:%d" % srv.port


def test_help_on_stdout_exit_0():
    for flag in ("--help", "-h"):
        rc, out, err = ctl(flag)
        assert rc == 0, (flag, rc, err)
        assert out.startswith("usage: atpctl") and "reserve" in out, out
        assert err == "", err


def test_version_both_binaries():
    rc, out, err = ctl("--version")
    assert rc == 0 and re.match(r"^atpctl \d+\.\d+\.\d+\n$", out), (rc, out, err)
    p = subprocess.run([ATPD, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=10)
    assert p.returncode == 0 and re.match(r"^atpd \d+\.\d+\.\d+\n$", p.stdout.decode()), p
    assert out.split()[1] == p.stdout.decode().split()[1], "the two versions differ"


def test_refused_connection_exits_3():
    rc, out, err = ctl("get", "SKU-1", url="http://127.0.0.1:%d" % free_port())
    assert rc == 3, "refused connection: exit %d, expected 3 (%r)" % (rc, err)
    assert "cannot connect" in err and "usage:" not in err, err
    rc, _, err = ctl("health", url="http://127.0.0.1:%d" % free_port())
    assert rc == 3, (rc, err)


def test_unknown_command_says_so():
    rc, out, err = ctl("foo")
    assert rc == 2, rc
    assert err.startswith("atpctl: unknown command 'foo'\n"), err
    assert "usage: atpctl" in err and out == "", (out, err)


def test_usage_errors_say_what_was_wrong():
    cases = [
        (["reserve", "r1", "SKU", "L1", "two"], "QTY must be a positive integer, got 'two'"),
        (["reserve", "r1", "SKU", "L1", "0"], "QTY must be a positive integer, got '0'"),
        (["reserve", "r1", "SKU", "L1", "2", "soon"], "TTL_MS must be a positive integer"),
        (["get"], "get takes SKU [LOCATION]"),
        (["show", "a", "b"], "show takes ID"),
        (["--bogus", "get", "x"], "unknown option '--bogus'"),
        (["get", "x", "--url"], "--url needs a value"),
        (["get", "x", "--channel", "pos"], "--channel only applies to reserve"),
        ([], "no command given"),
        (["--url", "ftp://x", "get", "x"], "the URL must look like http://HOST:PORT"),
    ]
    for args, want in cases:
        rc, out, err = ctl(*args)
        assert rc == 2, (args, rc, err)
        first = err.splitlines()[0] if err else ""
        assert want in first, "%r: first stderr line %r, expected %r" % (args, first, want)
        assert "usage: atpctl" in err, (args, err)


def test_reserve_default_channel_passes_shipped_ownership(srv):
    c = srv.client()
    sku = uid("ctl")
    c.adjust(sku, "L1", 5)
    rid = uid("r")
    rc, out, err = ctl("--json", "reserve", rid, sku, "L1", "2", url=url_of(srv))
    assert rc == 0, "atpctl reserve with the shipped ownership example: exit %d %s %s" % (rc, out, err)
    assert '"channel":"checkout"' in out, out
    assert c.pos(sku, "L1")["reserved"] == 2


def test_reserve_channel_option(srv):
    c = srv.client()
    sku = uid("ctl")
    c.adjust(sku, "L1", 5)
    rc, out, err = ctl("reserve", "--channel", "pos", uid("r"), sku, "L1", "1", "60000",
                       "--json", url=url_of(srv))
    assert rc == 0 and '"channel":"pos"' in out, (rc, out, err)
    rc, out, err = ctl("reserve", uid("r"), sku, "L1", "1", "--channel=web", "--json",
                       url=url_of(srv))
    assert rc == 1 and "not_owner" in out, "a channel the matrix refuses: %r" % ((rc, out, err),)
    assert c.pos(sku, "L1")["reserved"] == 1


def test_answers_end_with_newline(srv):
    rc, out, err = ctl("--json", "get", uid("none"), "L1", url=url_of(srv))
    assert out.endswith("}\n"), repr(out)


def test_demo_banner_lines_work_when_pasted_later():
    """The banner's curl lines end their answers with a newline, and the count example
    takes its time from the shell that runs it, not from when the banner was printed."""
    import signal
    import tempfile
    import time
    tmp = tempfile.mkdtemp(prefix="atpd-bb-demo-")
    port = free_port()
    env = dict(os.environ, ATPD_LISTEN="127.0.0.1:%d" % port)
    p = subprocess.Popen([os.path.join(ROOT, "scripts", "run-demo.sh"), "--data-dir",
                          os.path.join(tmp, "data"), "--threads", "1", "--durability", "none"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env, cwd=tmp)
    try:
        banner = []
        while True:
            line = p.stdout.readline().decode()
            assert line, "banner ended early: %r" % banner
            banner.append(line)
            if "atpctl --url" in line:
                break
        printed_at = time.time()
        curls = [ln.strip() for ln in banner if ln.strip().startswith("curl ")]
        assert len(curls) >= 10, banner
        deadline = time.time() + 15
        while subprocess.run(["curl", "-sf", "http://127.0.0.1:%d/readyz" % port],
                             stdout=subprocess.DEVNULL).returncode != 0:
            assert time.time() < deadline and p.poll() is None, "demo did not become ready"
            time.sleep(0.1)
        time.sleep(1.2)  # the user pastes the lines a little later
        for line in curls:
            if "/metrics" in line:
                continue
            out = subprocess.run(["bash", "-c", line], stdout=subprocess.PIPE, timeout=10).stdout
            assert out.endswith(b"}\n"), "%s\n-> %r (no newline at the end)" % (line, out[-80:])
            if "/v1/counts" in line:
                import json
                pos = json.loads(out)
                got = pos.get("counted_at") or pos.get("position", {}).get("counted_at")
                assert got and got >= int(printed_at) * 1000 + 1000, (
                    "counted_at %r is not the time the line ran (banner printed at %d): %r" % (
                        got, printed_at * 1000, pos))
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0


def test_deploy_unit_and_env_file_agree():
    """The unit reads the env file and passes no flag that would override it."""
    with open(os.path.join(ROOT, "deploy", "atpd.service")) as f:
        unit = f.read()
    with open(os.path.join(ROOT, "deploy", "atpd.env.example")) as f:
        env = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    keys = [ln.split("=", 1)[0] for ln in env]
    assert "ATPD_LISTEN" in keys, keys
    assert re.search(r"^EnvironmentFile=/etc/atpd/atpd\.env$", unit, re.M), \
        "the unit has no EnvironmentFile=/etc/atpd/atpd.env"
    assert "atpd.env.example" in unit, "the unit's header should say where the env file comes from"
    # ExecStart may continue over lines ending in a backslash
    m = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit, re.M)
    assert m, unit
    flags = re.findall(r"(--[a-z0-9-]+)", m.group(1))
    twins = {"ATPD_" + fl[2:].upper().replace("-", "_") for fl in flags}
    assert not twins & set(keys), "ExecStart overrides %s set in atpd.env.example" % (
        sorted(twins & set(keys)),)
    usage = subprocess.run([ATPD, "--help"], stdout=subprocess.PIPE).stdout.decode()
    known = {"ATPD_" + fl[2:].upper().replace("-", "_") for fl in re.findall(r"--[a-z0-9-]+", usage)}
    assert set(keys) <= known, "env file keys that are no flag's twin: %s" % sorted(set(keys) - known)


def test_every_command_reaches_its_route(srv):
    """Each command of the table runs its own route: show, commit and release on
    reservations, group, health and metrics (the split of main must keep them)."""
    c = srv.client()
    sku = uid("ctl")
    c.adjust(sku, "L1", 5)
    url = url_of(srv)
    kept, let_go = uid("r"), uid("r")
    for rid in (kept, let_go):
        rc, out, err = ctl("reserve", rid, sku, "L1", "1", url=url)
        assert rc == 0, (rc, out, err)
    rc, out, err = ctl("--json", "show", kept, url=url)
    assert rc == 0 and '"status":"held"' in out, (rc, out, err)
    rc, out, err = ctl("--json", "commit", kept, url=url)
    assert rc == 0 and '"status":"committed"' in out, (rc, out, err)
    rc, out, err = ctl("--json", "release", let_go, url=url)
    assert rc == 0 and '"status":"released"' in out, (rc, out, err)
    rc, out, err = ctl("--json", "show", uid("none"), url=url)
    assert rc == 1 and "not_found" in out, (rc, out, err)
    rc, out, err = ctl("--json", "group", sku, uid("nogroup"), url=url)
    assert rc == 1 and "not_found" in out, (rc, out, err)
    rc, out, err = ctl("health", url=url)
    assert rc == 0, (rc, out, err)
    rc, out, err = ctl("metrics", url=url)
    assert rc == 0 and "atpd_" in out, (rc, out[:200], err)


def test_long_request_reaches_the_server(srv):
    """libcurl has no fixed request buffer: a 9,000-byte SKU goes out whole and the
    server's own limit answers (414), where the socket code cut the path at 4 KiB."""
    rc, out, err = ctl("--json", "get", "s" * 9000, url=url_of(srv))
    assert rc == 1 and "uri_too_long" in out, (rc, out[:200], err)
    rc, out, err = ctl("--token", "t" * 9000, "get", uid("none"), url=url_of(srv))
    assert rc == 0 and "available" in out, (rc, out, err)  # no tokens file: ignored


# --- issue 12, item 7: the flow commands, help pages, exit codes --------------------

def _fake_ctl(fake, *args, env_extra=None):
    env = dict(os.environ, ATPD_URL=fake.url)
    env.pop("ATPD_TOKEN", None)
    env.update(env_extra or {})
    p = subprocess.run([ATPCTL] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=20, env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_every_flow_command_sends_the_contract_request():
    """Against a recording server: each command's method, path, query and body are
    the contract's (sections 6 and 7), whether or not atpd serves the route yet."""
    from ctl_fake import Fake
    fake = Fake(lambda req: (200, {"ok": True}))
    tmp = tempfile.mkdtemp(prefix="atpd-bb-ctl-")
    payload = os.path.join(tmp, "fixed.json")
    with open(payload, "w") as f:
        json.dump({"op": "adjust", "flow": "erp", "id": "a1", "sku": "S", "location": "L1",
                   "delta": 2, "reason": "received"}, f)
    csv_path = os.path.join(tmp, "wms.csv")
    with open(csv_path, "w") as f:
        f.write("sku,location,on_hand\nS,L1,4\n")
    json_path = os.path.join(tmp, "wms.json")
    with open(json_path, "w") as f:
        json.dump([{"sku": "S", "location": "L1", "on_hand": 4}], f)
    cases = [
        (["dead-letters"], "GET", "/v1/dead-letters", {}, None),
        (["dead-letters", "--owner", "store-ops", "--flow", "erp", "--status", "open"], "GET",
         "/v1/dead-letters", {"owner": "store-ops", "flow": "erp", "status": "open"}, None),
        (["dead-letters", "--cursor", "dl-7", "--limit", "50"], "GET", "/v1/dead-letters",
         {"cursor": "dl-7", "limit": "50"}, None),
        (["replay", "dl/1"], "POST", "/v1/dead-letters/dl%2F1/replay", {}, {}),
        (["replay", "dl-2", "--payload", payload, "--by", "ana"], "POST",
         "/v1/dead-letters/dl-2/replay", {},
         {"payload": {"op": "adjust", "flow": "erp", "id": "a1", "sku": "S", "location": "L1",
                      "delta": 2, "reason": "received"}, "by": "ana"}),
        (["replay", "dl-4", "--by", "ana"], "POST", "/v1/dead-letters/dl-4/replay", {},
         {"by": "ana"}),
        (["resolve", "dl-3", "--note", "fixed in ERP", "--by", "ana"], "POST",
         "/v1/dead-letters/dl-3/resolve", {}, {"note": "fixed in ERP", "by": "ana"}),
        (["resolve", "dl-3", "--note", "n"], "POST", "/v1/dead-letters/dl-3/resolve", {},
         {"note": "n"}),
        (["flows"], "GET", "/v1/flows", {}, None),
        (["pause", "erp", "--reason", "cutover", "--by", "ana"], "POST", "/v1/flows/erp/pause",
         {}, {"reason": "cutover", "by": "ana"}),
        (["resume", "erp"], "POST", "/v1/flows/erp/resume", {}, {}),
        (["resume", "erp", "--by", "ana"], "POST", "/v1/flows/erp/resume", {}, {"by": "ana"}),
        (["reconcile", json_path, "--source", "wms", "--as-of", "1700000000000"], "POST",
         "/v1/reconciliations", {}, {"id": "wms-1700000000000", "source": "wms",
                                     "as_of": 1700000000000,
                                     "positions": [{"sku": "S", "location": "L1", "on_hand": 4}]}),
        (["reconcile", csv_path, "--source", "wms", "--as-of", "2026-01-02T03:04:05Z", "--id",
          "r9"], "POST", "/v1/reconciliations",
         {"id": "r9", "source": "wms", "as_of": "2026-01-02T03:04:05Z"}, "csv"),
        (["snapshot"], "POST", "/admin/snapshot", {}, {}),
        (["snapshot", "--show"], "GET", "/admin/snapshot", {}, None),
        (["audit", "--action", "pause", "--by", "ana", "--since", "1700000000000"], "GET",
         "/v1/audit", {"action": "pause", "by": "ana", "since": "1700000000000"}, None),
        (["get", "gid://shopify/ProductVariant/1", "L 1"], "GET", "/v1/availability",
         {"sku": "gid://shopify/ProductVariant/1", "location": "L 1"}, None),
    ]
    try:
        for args, method, path, query, body in cases:
            n = len(fake.requests)
            rc, out, err = _fake_ctl(fake, *args)
            assert rc == 0, (args, rc, out, err)
            assert len(fake.requests) == n + 1, (args, fake.requests[n:])
            req = fake.requests[-1]
            assert (req.method, req.path, req.query) == (method, path, query), (args, req)
            if body == "csv":
                assert req.headers["content-type"] == "text/csv", req.headers
                assert req.body == b"sku,location,on_hand\nS,L1,4\n", req.body
            elif body is not None:
                assert req.headers["content-type"] == "application/json", (args, req.headers)
                assert req.json == body, (args, req.json)
            else:
                assert req.body == b"", (args, req.body)
        # ATPD_URL and ATPD_TOKEN, and flags win over them.
        rc, _, _ = _fake_ctl(fake, "flows", env_extra={"ATPD_TOKEN": "env-token"})
        assert rc == 0 and fake.requests[-1].headers["authorization"] == "Bearer env-token"
        rc, _, _ = _fake_ctl(fake, "flows", "--token", "flag-token",
                             env_extra={"ATPD_TOKEN": "env-token"})
        assert fake.requests[-1].headers["authorization"] == "Bearer flag-token"
        n = len(fake.requests)
        rc, _, err = _fake_ctl(fake, "flows", "--url", "http://127.0.0.1:%d" % free_port())
        assert rc == 3 and len(fake.requests) == n, (rc, err)
    finally:
        fake.close()


def test_required_options_are_usage_errors():
    cases = [
        (["resolve", "dl-1"], "resolve needs --note"),
        (["pause", "erp"], "pause needs --reason"),
        (["reconcile", "/dev/null", "--source", "wms"], "reconcile needs --source SOURCE and --as-of"),
        (["import"], "import takes FILE"),
        (["import", "x.csv", "--chunk", "0"], "--chunk must be an integer in 1..100000"),
        (["import", "x.csv", "--chunk", "100001"], "--chunk must be an integer in 1..100000"),
        (["import", "/nonexistent.csv"], "/nonexistent.csv: No such file or directory"),
        (["import", "x.txt"], "say --format csv|ndjson|json|msgpack"),
        (["flows", "--note", "x"], "--note only applies to resolve"),
        (["dead-letters", "--reason", "x"], "--reason only applies to pause"),
        (["flows", "--timeout-ms", "0"], "--timeout-ms must be an integer"),
        (["help", "nope"], "unknown command 'nope'"),
    ]
    for args, want in cases:
        rc, out, err = ctl(*args, url="http://127.0.0.1:%d" % free_port())
        assert rc == 2, (args, rc, err)
        assert want in err.splitlines()[0], (args, err)


def test_help_for_each_command_on_stdout():
    rc, out, _ = ctl("--help")
    names = re.findall(r"^  ([a-z][a-z-]*) ", out, re.M)
    for want in ("import", "dead-letters", "replay", "resolve", "flows", "pause", "resume",
                 "reconcile", "snapshot", "audit", "get"):
        assert want in names, (want, names)
    for name in names:
        if name == "help":
            continue
        for args in (["help", name], [name, "--help"]):
            rc, out, err = ctl(*args)
            assert rc == 0 and err == "", (args, rc, err)
            assert out.startswith("usage: atpctl [GLOBAL OPTIONS] %s" % name), (args, out)
    rc, out, _ = ctl("help", "import")
    for opt in ("--chunk", "--op", "--flow", "--from", "--format", "--progress", "--rate"):
        assert opt in out, (opt, out)


def test_timeout_and_dns_exit_3():
    """A server that accepts and never answers: --timeout-ms cuts it, exit 3."""
    import socket
    import time
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        t0 = time.time()
        rc, out, err = ctl("--timeout-ms", "300", "flows", url="http://127.0.0.1:%d" % s.getsockname()[1])
        assert rc == 3 and "no answer within the timeout" in err, (rc, err)
        assert time.time() - t0 < 3, "the timeout was not applied"
    finally:
        s.close()
    rc, out, err = ctl("--timeout-ms", "3000", "flows", url="http://no-such-host.invalid:1")
    assert rc == 3 and "cannot connect" in err, (rc, err)


def test_human_output_and_error_line(srv):
    c = srv.client()
    sku = uid("hum")
    c.adjust(sku, "L1", 5)
    rc, out, err = ctl("get", sku, "L1", url=url_of(srv))
    assert rc == 0 and re.search(r"^on_hand\s+5$", out, re.M), out
    assert re.search(r"^counted_at|^version\s+\d+$", out, re.M), out
    rc, out, err = ctl("get", sku, url=url_of(srv))
    assert re.search(r"^locations:\n  sku\s+location\s+on_hand", out, re.M), out
    rc, out, err = ctl("show", uid("none"), url=url_of(srv))
    assert rc == 1 and out == "" and re.match(r"atpctl: HTTP 404 not_found: ", err), (out, err)

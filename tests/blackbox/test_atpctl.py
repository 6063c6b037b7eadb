"""bin/atpctl and bin/atpd on first contact (issue 9, item 15): --help, --version,
exit codes, what a usage error says, and reserve's --channel."""
import os
import re
import subprocess

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

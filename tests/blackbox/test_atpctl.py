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
    rc, out, err = ctl("reserve", rid, sku, "L1", "2", url=url_of(srv))
    assert rc == 0, "atpctl reserve with the shipped ownership example: exit %d %s %s" % (rc, out, err)
    assert '"channel":"checkout"' in out, out
    assert c.pos(sku, "L1")["reserved"] == 2


def test_reserve_channel_option(srv):
    c = srv.client()
    sku = uid("ctl")
    c.adjust(sku, "L1", 5)
    rc, out, err = ctl("reserve", "--channel", "pos", uid("r"), sku, "L1", "1", "60000",
                       url=url_of(srv))
    assert rc == 0 and '"channel":"pos"' in out, (rc, out, err)
    rc, out, err = ctl("reserve", uid("r"), sku, "L1", "1", "--channel=web", url=url_of(srv))
    assert rc == 1 and "not_owner" in out, "a channel the matrix refuses: %r" % ((rc, out, err),)
    assert c.pos(sku, "L1")["reserved"] == 1


def test_answers_end_with_newline(srv):
    rc, out, err = ctl("get", uid("none"), "L1", url=url_of(srv))
    assert out.endswith("}\n"), repr(out)

"""atpctl import (issue 12, item 7): CSV, NDJSON and msgpack files of 20,000 ops sent in
chunks to POST /v1/batch, the summary and every position checked through the server,
interrupted imports resumed (SIGINT and SIGKILL), the progress bar under a
pseudo-terminal (script(1)) and plain lines when piped, rejections and exit codes,
keep-alive (one connection for every chunk) and a 429 retried."""
import json
import os
import re
import signal
import subprocess
import tempfile
import time

import msgpack

from ctl_fake import Fake, batch_answer
from harness import ROOT, uid

ATPCTL = os.path.join(ROOT, "bin", "atpctl")
N = 20000
SKUS = 200
_dir = tempfile.mkdtemp(prefix="atpd-bb-ctl-import-")


def ctl(*args, url, timeout=60):
    env = dict(os.environ, ATPD_URL=url)
    env.pop("ATPD_TOKEN", None)
    p = subprocess.run([ATPCTL] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def url_of(srv):
    return "http://127.0.0.1:%d" % srv.port


def adjustments(tag, n=N, skus=SKUS):
    """n adjustment ops over skus SKUs at L1; op i adds (i % 3) + 1."""
    return [dict(op="adjust", flow="erp", id="%s-%d" % (tag, i), sku="%s-sku-%d" % (tag, i % skus),
                 location="L1", delta=i % 3 + 1, reason="received") for i in range(n)]


def expected(ops):
    want = {}
    for o in ops:
        want[o["sku"]] = want.get(o["sku"], 0) + o["delta"]
    return want


def write(ops, fmt, name=None):
    path = os.path.join(_dir, (name or uid("ops")) + "." + fmt)
    if fmt == "csv":
        with open(path, "w") as f:
            f.write("op,flow,id,sku,location,delta,reason\n")
            for o in ops:
                f.write("%(op)s,%(flow)s,%(id)s,%(sku)s,%(location)s,%(delta)d,%(reason)s\n" % o)
    elif fmt == "ndjson":
        with open(path, "w") as f:
            for o in ops:
                f.write(json.dumps(o) + "\n")
    else:
        with open(path, "wb") as f:
            for o in ops:
                f.write(msgpack.packb(o, use_bin_type=True))
    return path


def check_positions(srv, ops):
    c = srv.client()
    for sku, on_hand in expected(ops).items():
        got = c.pos(sku, "L1")["on_hand"]
        assert got == on_hand, "%s: on_hand %d, expected %d" % (sku, got, on_hand)


def summary_of(out):
    """The human summary's counts: {"received": n, ...}."""
    return {k: int(v) for k, v in re.findall(
        r"^  (received|applied|replayed|rejected|queued)\s+(\d+)", out, re.M)}


def test_import_csv_ndjson_msgpack(srv):
    for fmt in ("csv", "ndjson", "msgpack"):
        ops = adjustments(uid(fmt))
        path = write(ops, fmt)
        t0 = time.time()
        rc, out, err = ctl("import", path, url=url_of(srv))
        assert rc == 0, (fmt, rc, out[-500:], err)
        s = summary_of(out)
        assert s == dict(received=N, applied=N, replayed=0, rejected=0, queued=0), (fmt, s, out)
        m = re.search(r"^imported .*: (\d+) ops in ([\d.]+) s \((\d+) ops/s\)$", out, re.M)
        assert m and int(m.group(1)) == N, out[-400:]
        assert float(m.group(2)) <= time.time() - t0 + 0.1 and int(m.group(3)) > 0, m.groups()
        # Piped: plain lines, one per chunk here (20 chunks of 1000 = one per 5%), no \r.
        lines = re.findall(r"^import: (\d+)/(\d+) ops \((\d+)%\), (\d+) ops/s, ETA \S+$", out,
                           re.M)
        assert "\r" not in out, repr(out[:200])
        assert len(lines) == 20 and lines[-1][:3] == (str(N), str(N), "100"), lines
        check_positions(srv, ops)


def test_import_json_summary(srv):
    ops = adjustments(uid("js"), n=3000, skus=30)
    path = write(ops, "msgpack")
    rc, out, err = ctl("--json", "import", path, "--chunk", "700", url=url_of(srv))
    assert rc == 0, (rc, out, err)
    d = json.loads(out)  # --json: the summary alone, no progress
    assert d["ops"] == 3000 and d["chunks"] == 5 and d["applied"] == 3000, d
    assert d["rejected"] == 0 and d["next"] == 3000 and d["interrupted"] is False, d
    check_positions(srv, ops)


def test_defaults_rejections_and_exit_1(srv):
    """--op/--flow fill ops without them; bad ops are listed with index and line."""
    tag = uid("rej")
    path = os.path.join(_dir, tag + ".csv")
    with open(path, "w") as f:
        f.write("id,sku,location,delta,reason\n")
        f.write("%s-0,%s,L1,5,received\n" % (tag, tag))
        f.write("%s-1,%s,L1,0,received\n" % (tag, tag))           # delta 0: 400
        f.write("\n")                                               # blank: skipped
        f.write("%s-2,%s,L1,2,received,extra\n" % (tag, tag))     # too many cells
        f.write('%s-3,"%s",L1,3,"received"\n' % (tag, tag))       # quoted cells
    rc, out, err = ctl("import", path, "--op", "adjust", "--flow", "erp", url=url_of(srv))
    assert rc == 1, (rc, out, err)
    s = summary_of(out)
    assert s["applied"] == 2 and s["rejected"] == 2 and s["received"] == 3, (s, out)
    assert re.search(r"^  op 1 \(line 3\): 400 bad_request: .*\(field delta\)$", out, re.M), out
    assert re.search(r"^  op 2 \(line 5\): refused here: .*more cells", out, re.M), out
    assert srv.client().pos(tag, "L1")["on_hand"] == 8
    # Without --op the file names no op: a usage error before anything is sent.
    rc, out, err = ctl("import", path, url=url_of(srv))
    assert rc == 2 and "no op column" in err, (rc, err)


def wait_first_progress(p):
    line = p.stdout.readline().decode()
    assert line.startswith("import: "), line
    return line


def test_interrupted_import_resumes(srv):
    """SIGINT partway: the chunk in flight finishes, the summary says --from N;
    the same command again replays the N and applies the rest."""
    ops = adjustments(uid("int"))
    path = write(ops, "ndjson")
    env = dict(os.environ, ATPD_URL=url_of(srv))
    p = subprocess.Popen([ATPCTL, "import", path, "--chunk", "100", "--rate", "5000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    wait_first_progress(p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    out, err = out.decode(), err.decode()
    assert p.returncode == 130, (p.returncode, out[-300:], err)
    m = re.search(r"add --from (\d+)", err)
    assert m, err
    done = int(m.group(1))
    first = summary_of(out)
    assert 0 < done < N and first["applied"] == done and done % 100 == 0, (done, first)
    rc, out, err = ctl("import", path, url=url_of(srv))
    assert rc == 0, (rc, out[-300:], err)
    again = summary_of(out)
    assert again["replayed"] == done and again["applied"] == N - done, (done, again)
    check_positions(srv, ops)


def test_killed_import_resumes_and_from_skips(srv):
    """SIGKILL partway (no summary): the re-run's applied + replayed cover the file,
    each op once; --from N then sends only the ops after N."""
    ops = adjustments(uid("kill"))
    path = write(ops, "csv")
    env = dict(os.environ, ATPD_URL=url_of(srv))
    p = subprocess.Popen([ATPCTL, "import", path, "--chunk", "100", "--rate", "5000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    line = wait_first_progress(p)
    seen = int(re.match(r"import: (\d+)/", line).group(1))
    p.kill()
    p.wait(10)
    rc, out, err = ctl("import", path, url=url_of(srv))
    assert rc == 0, (rc, out[-300:], err)
    s = summary_of(out)
    assert s["applied"] + s["replayed"] == N and s["replayed"] >= seen, (seen, s)
    check_positions(srv, ops)
    rc, out, err = ctl("--json", "import", path, "--from", "19000", url=url_of(srv))
    d = json.loads(out)
    assert rc == 0 and d["skipped"] == 19000 and d["received"] == 1000, d
    assert d["replayed"] == 1000 and d["applied"] == 0, d
    check_positions(srv, ops)


def test_progress_bar_under_a_terminal(srv):
    ops = adjustments(uid("tty"), n=6000, skus=60)
    path = write(ops, "ndjson")
    cmd = "%s --url %s import %s --chunk 100 --rate 8000" % (ATPCTL, url_of(srv), path)
    t0 = time.time()
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    elapsed = time.time() - t0
    out = p.stdout.decode()
    assert p.returncode == 0, (p.returncode, out[-400:])
    draws = re.findall(r"\r\[[#.]{30}\] (\d+)/6000 ops +(\d+)%  (\d+) ops/s  ETA (\d+:\d\d)",
                       out)
    assert len(draws) >= 4, repr(out[:600])
    # At most 10 redraws a second (plus the last one).
    assert len(draws) <= elapsed * 10 + 2, (len(draws), elapsed)
    assert draws[-1][:2] == ("6000", "100"), draws[-1]
    assert any(int(d[2]) > 0 and d[3] != "0:00" for d in draws[:-1]) or elapsed < 1, draws
    assert "import: " not in out, "plain lines on a terminal"
    assert summary_of(out.replace("\r\n", "\n"))["applied"] == 6000, out[-400:]
    check_positions(srv, ops)


def test_one_connection_for_every_chunk():
    """Keep-alive: 20 chunks over one TCP connection."""
    fake = Fake(batch_answer)
    try:
        ops = adjustments(uid("ka"), n=2000)
        path = write(ops, "msgpack")
        rc, out, err = ctl("import", path, "--chunk", "100", url=fake.url)
        assert rc == 0, (rc, out, err)
        posts = [r for r in fake.requests if r.path == "/v1/batch"]
        assert len(posts) == 20, len(posts)
        assert len({r.conn for r in posts}) == 1, "chunks went over several connections"
        assert all(r.headers["content-type"] == "application/msgpack" for r in posts)
        first = msgpack.Unpacker(raw=False)
        first.feed(posts[0].body)
        assert list(first) == ops[:100], "the first chunk is not the file's first 100 ops"
    finally:
        fake.close()


def test_429_is_retried_after_retry_after():
    calls = []

    def answer(req):
        calls.append(time.time())
        if len(calls) == 1:
            return 429, {"error": {"code": "too_many_requests", "message": "full"}}, {
                "Retry-After": "1"}
        return batch_answer(req)

    fake = Fake(answer)
    try:
        path = write(adjustments(uid("429"), n=10), "ndjson")
        rc, out, err = ctl("import", path, url=fake.url)
        assert rc == 0 and "answered 429; again in 1 s" in err, (rc, out, err)
        assert len(calls) == 2 and calls[1] - calls[0] >= 0.9, calls
        assert summary_of(out)["applied"] == 10, out
    finally:
        fake.close()


def test_csv_goes_as_msgpack_with_json_cells(srv):
    """A CSV's rows go out as msgpack ops (the server's cheaper path), with what the cells
    say typed as before: integers, allow_split's boolean, a JSON array cell (a
    reservation's lines) as that array."""
    tag = uid("csvmp")
    c = srv.client()
    assert c.post("/v1/adjustments", dict(id=tag + "-stock", sku=tag, location="L1", delta=10,
                                          reason="received", source="erp")).status == 200
    path = os.path.join(_dir, tag + ".csv")
    with open(path, "w") as f:
        f.write("op,flow,id,sku,location,delta,reason,lines,allow_split\n")
        f.write("adjust,erp,%s-a,%s,L1,5,received,,\n" % (tag, tag))
        f.write('reserve,oms,%s-r,,,,,"[{""sku"":""%s"",""location"":""L1"",""qty"":4}]",false\n'
                % (tag, tag))
    fake = Fake(batch_answer)
    try:
        rc, out, err = ctl("import", path, url=fake.url)
        posts = [r for r in fake.requests if r.path == "/v1/batch"]
        assert len(posts) == 1, (rc, out, err)
        assert posts[0].headers["content-type"] == "application/msgpack", posts[0].headers
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(posts[0].body)
        ops = list(unpacker)
        assert ops[0]["delta"] == 5 and ops[1]["allow_split"] is False, ops
        assert ops[1]["lines"] == [dict(sku=tag, location="L1", qty=4)], ops
        assert "sku" not in ops[1] and "delta" not in ops[1], ops  # empty cells left out
    finally:
        fake.close()
    rc, out, err = ctl("import", path, url=url_of(srv))
    assert rc == 0, (rc, out[-300:], err)
    p = c.pos(tag, "L1")
    assert p["on_hand"] == 15 and p["reserved"] == 4, p

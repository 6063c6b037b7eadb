"""Deliberately bad tests that test_selfcheck.py runs in a pytest of its own.

Each test name says what the runner must report for it."""
import os
import signal
import threading
import time

import openapi_check
from harness import formats


def test_kill_fails(srv):
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait()


@formats()
def test_restarted_passes(srv, fmt):
    assert srv.alive()
    assert srv.client(fmt).get("/healthz").status == 200


def test_violation_in_thread_fails(srv):
    r = srv.client().get("/healthz")

    def worker():
        try:
            openapi_check._fail("GET", "/healthz", r, "a violation a worker thread swallowed")
        except AssertionError:
            pass
    t = threading.Thread(target=worker)
    t.start()
    t.join()


def test_undocumented_status_fails(srv):
    # A 404 is documented for GET /v1/groups/{name} but not for GET /healthz.
    r = srv.client().get("/v1/groups/" + "g%d" % time.time_ns())
    assert r.status == 404
    openapi_check.check("GET", "/healthz", r)


def test_not_validated_passes(srv):
    srv.client(validate=False).get("/healthz")


def test_sanitizer_report_is_server_exit_error(srv):
    with open(srv.stderr_path, "ab") as f:
        f.write(b"==1==ERROR: AddressSanitizer: written by the self-check\n")

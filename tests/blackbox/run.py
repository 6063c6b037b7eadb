#!/usr/bin/python3
"""Black-box test runner for bin/atpd.

Discovers tests/blackbox/test_*.py, runs every function named test_* in source
order and prints "ok NAME" or "FAIL NAME" (message and traceback indented),
then "N passed, N failed" as the last line; exits 1 on any failure.

Fixtures, by the test function's parameter names:
  srv  one bin/atpd per module (args from the module's SERVER_ARGS), started on
       a free port with a temp --data-dir, stopped with SIGTERM after the
       module; a non-zero exit or a sanitizer report is a failure of the
       module's "server_exit" check.
  fmt  the test runs once per value in fn.params (harness.formats).
Modules with ASAN = True run a second time against bin/atpd-asan when it exists
(ATPD_ASAN_BIN chooses another binary, ATPD_ASAN=0 skips).

  tests/blackbox/run.py [-k SUBSTRING] [module ...]
Env: ATPD_BIN (default bin/atpd).
"""
import importlib
import inspect
import os
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

TEST_TIMEOUT_S = 90


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout("test took longer than %d s" % TEST_TIMEOUT_S)


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, name, secs):
        self.passed += 1
        print("ok %s (%.2fs)" % (name, secs), flush=True)

    def fail(self, name, message, tb=""):
        self.failed += 1
        print("FAIL %s" % name, flush=True)
        for line in (message or "").rstrip().splitlines():
            print("  " + line)
        for line in (tb or "").rstrip().splitlines():
            print("  " + line)
        sys.stdout.flush()


def collect(mod):
    fns = [(getattr(fn, "__code__").co_firstlineno, name, fn)
           for name, fn in vars(mod).items()
           if name.startswith("test_") and inspect.isfunction(fn) and fn.__module__ == mod.__name__]
    return [(name, fn) for _, name, fn in sorted(fns)]


def run_module(mod, results, binary=None, label="", kfilter=None):
    tests = collect(mod)
    cases = []
    for name, fn in tests:
        params = getattr(fn, "params", None)
        for p in (params or (None,)):
            full = "%s%s.%s%s" % (label, mod.__name__, name, "[%s]" % p if p else "")
            if kfilter and kfilter not in full:
                continue
            cases.append((full, fn, p))
    if not cases:
        return
    needs_srv = any("srv" in inspect.signature(fn).parameters for _, fn, _ in cases)
    srv = None
    if needs_srv:
        try:
            srv = harness.Server(binary=binary, args=getattr(mod, "SERVER_ARGS", ()),
                                 env=getattr(mod, "SERVER_ENV", None))
        except Exception as e:  # noqa: BLE001
            for full, _, _ in cases:
                results.fail(full, "server fixture: %s" % e)
            return
    for full, fn, p in cases:
        kwargs = {}
        sig = inspect.signature(fn).parameters
        if "srv" in sig:
            if not srv.alive():
                results.fail(full, "server is not running (died earlier): exit %s\n%s" % (
                    srv.proc.returncode, srv.stderr_tail()))
                try:
                    srv.start()
                except Exception as e:  # noqa: BLE001
                    results.fail(full + " (restart)", str(e))
                    continue
            kwargs["srv"] = srv
        if "fmt" in sig:
            kwargs["fmt"] = p
        if "binary" in sig:
            kwargs["binary"] = binary
        t0 = time.time()
        signal.alarm(TEST_TIMEOUT_S)
        try:
            fn(**kwargs)
            signal.alarm(0)
            if srv is not None and not srv.alive():
                results.fail(full, "server died during the test: exit %s\n%s" % (
                    srv.proc.returncode, srv.stderr_tail()))
            else:
                results.ok(full, time.time() - t0)
        except Exception as e:  # noqa: BLE001 (AssertionError and everything else)
            signal.alarm(0)
            msg = "%s: %s" % (type(e).__name__, e)
            if srv is not None and not srv.alive():
                msg += "\nserver died: exit %s\n%s" % (srv.proc.returncode, srv.stderr_tail())
            results.fail(full, msg, traceback.format_exc(limit=-4))
    if srv is not None:
        name = "%s%s.server_exit" % (label, mod.__name__)
        problem = srv.stop()
        if problem:
            results.fail(name, problem)
        else:
            results.ok(name, 0)


def main(argv):
    kfilter = None
    names = []
    i = 0
    while i < len(argv):
        if argv[i] == "-k":
            kfilter = argv[i + 1]
            i += 2
            continue
        names.append(argv[i].replace(".py", "").split("/")[-1])
        i += 1
    if not names:
        names = sorted(f[:-3] for f in os.listdir(HERE) if f.startswith("test_") and f.endswith(".py"))
    signal.signal(signal.SIGALRM, _alarm)
    results = Results()
    t0 = time.time()
    asan_bin = os.environ.get("ATPD_ASAN_BIN") or os.path.join(harness.ROOT, "bin", "atpd-asan")
    do_asan = os.environ.get("ATPD_ASAN", "1") != "0" and os.access(asan_bin, os.X_OK)
    mods = []
    for name in names:
        try:
            mods.append(importlib.import_module(name))
        except Exception as e:  # noqa: BLE001
            results.fail("%s.import" % name, str(e), traceback.format_exc())
    for mod in mods:
        run_module(mod, results, kfilter=kfilter)
    if do_asan:
        for mod in mods:
            if getattr(mod, "ASAN", False):
                run_module(mod, results, binary=asan_bin, label="asan:", kfilter=kfilter)
    else:
        print("note: %s not found, sanitizer subset skipped" % asan_bin)
    print("blackbox took %.1f s" % (time.time() - t0))
    print("%d passed, %d failed" % (results.passed, results.failed), flush=True)
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

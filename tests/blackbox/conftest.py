"""pytest wiring for the black-box suite: fixtures and parametrisation by name.

  python3 -m pytest tests/blackbox [-k name] [test_stock.py ...]

Fixtures the tests ask for by parameter name:
  srv     one bin/atpd per module and binary (args from the module's SERVER_ARGS,
          env from SERVER_ENV), on a free port with a temp --data-dir, stopped
          with SIGTERM after the module's last test. A server found dead before
          a test is restarted; one that died during a test fails that test. A
          non-zero exit at the end or a sanitizer report in its stderr is the
          error "server_exit" at the teardown of the module's last test.
  fmt     the test runs once per encoding in fn.params (harness.formats).
  binary  None (bin/atpd, or ATPD_BIN) or the sanitizer binary.
Modules with ASAN = True run every test that uses srv or binary a second time
against bin/atpd-asan (test ids say "asan"; ATPD_ASAN_BIN chooses another
binary, ATPD_ASAN=0 skips). Every response a harness.Client reads is checked
against proto/openapi.yaml (openapi_check.py); the count is printed at the end.
"""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import harness  # noqa: E402
import openapi_check  # noqa: E402

ASAN_BIN = os.environ.get("ATPD_ASAN_BIN") or os.path.join(harness.ROOT, "bin", "atpd-asan")
ASAN_ON = os.environ.get("ATPD_ASAN", "1") != "0" and os.access(ASAN_BIN, os.X_OK)


def pytest_report_header(config):
    if ASAN_ON:
        return "atpd: ASAN modules also run against %s" % ASAN_BIN
    return "note: %s not found (or ATPD_ASAN=0), sanitizer subset skipped" % ASAN_BIN


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    # The binary first so that ids read test_x[asan-json].
    if getattr(metafunc.module, "ASAN", False) and ("srv" in names or "binary" in names):
        variants = ["atpd", "asan"] if ASAN_ON else ["atpd"]
        metafunc.parametrize("variant", variants, indirect=True, scope="module")
    if "fmt" in names:
        params = tuple(getattr(metafunc.function, "params", None) or (None,))
        metafunc.parametrize("fmt", params, ids=[str(p) for p in params])


@pytest.fixture(scope="module")
def variant(request):
    return getattr(request, "param", "atpd")


@pytest.fixture(scope="module")
def binary(variant):
    return ASAN_BIN if variant == "asan" else None


# (module name, variant) -> the running server of that group of tests.
_servers = {}


def _group(item):
    if item is None:
        return None
    callspec = getattr(item, "callspec", None)
    return (item.module.__name__, callspec.params.get("variant", "atpd") if callspec else "atpd")


def _stop(key):
    """Stops the group's server; raises the server_exit failure if it exited badly."""
    server = _servers.pop(key, None)
    if server is None:
        return
    problem = server.stop()
    if problem:
        # pytest reports this as an error ("N errors"), which tests/run.sh counts
        # as a failure.
        pytest.fail("server_exit (%s, %s): %s" % (key[0], server.binary, problem), pytrace=False)


@pytest.fixture(scope="module")
def module_server(request, binary, variant):
    mod = request.module
    key = (mod.__name__, variant)
    server = harness.Server(binary=binary, args=getattr(mod, "SERVER_ARGS", ()),
                            env=getattr(mod, "SERVER_ENV", None))
    _servers[key] = server
    yield server
    # Normally already stopped by pytest_runtest_teardown below.
    _stop(key)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    # Stop a group's server at the teardown of its last test, so that a bad exit
    # is an error of that test. Left to the module fixture, it would surface in
    # the setup of the next group's first test (pytest switches a module-scoped
    # parameter there) and keep that test from running.
    key = _group(item)
    if key in _servers and _group(nextitem) != key:
        _stop(key)


@pytest.fixture
def srv(module_server, request):
    if not module_server.alive():
        # The test during which it died has already failed (see the report hook).
        module_server.start()
    request.node.atpd_server = module_server
    return module_server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    openapi_check.begin_test()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when != "call":
        return
    rep = outcome.get_result()
    extra = []
    server = getattr(item, "atpd_server", None)
    if server is not None and not server.alive():
        extra.append("server died during the test: exit %s\n%s" % (
            server.proc.returncode, server.stderr_tail()))
    # Violations raised in the test's own thread already failed it; these also
    # catch those that worker threads swallowed.
    missed = openapi_check.end_test()
    if missed and rep.passed:
        extra.append("responses that do not match proto/openapi.yaml:\n" + "\n".join(missed))
    if not extra:
        return
    text = "\n".join(extra)
    if rep.passed:
        rep.outcome = "failed"
        rep.longrepr = text
    else:
        rep.sections.append(("atpd", text))


def pytest_sessionfinish(session, exitstatus):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the counts to the controller
        workeroutput["openapi_counts"] = dict(openapi_check.COUNTS)


@pytest.hookimpl(optionalhook=True)  # an xdist hook; the suite also runs without xdist
def pytest_testnodedown(node, error):
    counts = getattr(node, "workeroutput", {}).get("openapi_counts", {})
    for k, v in counts.items():
        openapi_check.COUNTS[k] = openapi_check.COUNTS.get(k, 0) + v


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if getattr(config, "workerinput", None) is not None:
        return
    terminalreporter.write_line(openapi_check.summary())

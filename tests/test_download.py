"""Issue 8: downloads against a local HTTP server on 127.0.0.1 (never the real network).

The server serves the real MNIST .gz files from the shared data folder (so their sha256 is right), and can instead
truncate them (Content-Length larger than the body), drop or reset the connection mid-way, send a broken chunked
body, serve wrong bytes, answer 404 or 503, or stall. advbp must retry what is worth retrying, move on to the next
mirror when asking again is pointless, never keep a bad file under the final name, leave no temporary file, and
say what happened at every mirror.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import advbp_cli.data.download as download
from advbp_cli.data.download import download_verified, sha256_of
from advbp_cli.data.mnist import FILES, SHA256_GZ, ensure_files, load_mnist
from advbp_cli.errors import UsageProblem

SMALL = "t10k-labels-idx1-ubyte.gz"  # 4.5 kB: quick to serve many times


class Server:
    """routes: URL path -> behaviour; hits: every path requested, in order."""

    def __init__(self, source: Path):
        self.source = source
        self.routes: dict[str, tuple] = {}
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                kind, *arg = outer.routes.get(self.path, ("status", 404))
                name = self.path.rsplit("/", 1)[-1]
                if kind == "status":
                    self.send_error(arg[0])
                    return
                data = arg[0] if arg and isinstance(arg[0], bytes) else (outer.source / name).read_bytes()
                if kind == "flaky":  # truncated for the first arg[1] requests, then good
                    kind = "truncated" if outer.hits.count(self.path) <= arg[1] else "good"
                if kind == "chunked_cut":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = data[: len(data) // 2]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
                    self.wfile.write(b"%x\r\n" % (len(data) - len(half)) + data[len(half): len(half) + 10])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if kind == "good" or kind == "bytes":
                    self.wfile.write(data)
                elif kind == "truncated":  # Content-Length promises more than is sent, then the server hangs up
                    self.wfile.write(data[: len(data) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                elif kind == "reset":  # connection reset (RST) mid-way
                    self.wfile.write(data[: len(data) // 3])
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                elif kind == "stall":
                    self.wfile.write(data[:100])
                    self.wfile.flush()
                    time.sleep(arg[-1])
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def mirror(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(data_dir):
    s = Server(data_dir / "mnist")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(download, "RETRY_PAUSE_S", 0.01, raising=False)


def assert_clean(folder: Path, expect: set[str]) -> None:
    """Exactly the expected files: nothing bad under a final name, no temporary files."""
    present = {p.name for p in folder.iterdir()} if folder.exists() else set()
    assert present == expect, present


def fetch(server, mirrors: list[str], dest: Path, name: str = SMALL, logs: list | None = None):
    urls = [server.mirror(m) + name for m in mirrors]
    download_verified(name, urls, dest, SHA256_GZ[name.removesuffix(".gz")], log=(logs if logs is not None else []).append)


# ------------------------------------------------------------------------------------------------ good files


def test_good_file_is_placed_verified(server, tmp_path, data_dir):
    server.routes["/a/" + SMALL] = ("good",)
    dest = tmp_path / SMALL
    fetch(server, ["a"], dest)
    assert dest.read_bytes() == (data_dir / "mnist" / SMALL).read_bytes()
    assert server.hits == ["/a/" + SMALL]
    assert_clean(tmp_path, {SMALL})


def test_ensure_files_downloads_all_four_and_they_load(server, tmp_path, monkeypatch):
    for name in FILES:
        server.routes[f"/good/{name}.gz"] = ("good",)
    monkeypatch.setenv("ADVBP_MNIST_MIRRORS", f"{server.mirror('dead')},{server.mirror('good')}")
    logs = []
    files = ensure_files(tmp_path, download=True, log=logs.append)
    assert sorted(files) == sorted(FILES)
    assert_clean(tmp_path / "mnist", {f"{n}.gz" for n in FILES})
    for name, path in files.items():
        assert sha256_of(path) == SHA256_GZ[name]
    # the first mirror 404s: asked once per file, not retried
    assert sum(h.startswith("/dead/") for h in server.hits) == 4
    raw = load_mnist(tmp_path, download=False)
    assert raw["x_train"].shape == (60000, 784) and raw["y_test"].shape == (10000,)


# ------------------------------------------------------------------------------------ truncated and cut files


@pytest.mark.parametrize("kind", ["truncated", "chunked_cut", "reset"])
def test_cut_transfers_are_retried_then_the_next_mirror_is_used(kind, server, tmp_path):
    server.routes["/bad/" + SMALL] = (kind,)
    server.routes["/good/" + SMALL] = ("good",)
    dest = tmp_path / SMALL
    logs = []
    fetch(server, ["bad", "good"], dest, logs=logs)
    assert sha256_of(dest) == SHA256_GZ[SMALL.removesuffix(".gz")]
    assert server.hits == ["/bad/" + SMALL] * download.ATTEMPTS_PER_MIRROR + ["/good/" + SMALL]
    assert any("retrying" in m for m in logs), logs
    assert_clean(tmp_path, {SMALL})


@pytest.mark.parametrize("kind,says", [
    ("truncated", "connection closed after 1514 of 4542 bytes"),
    ("chunked_cut", "connection closed after"),
    ("reset", "reset|connection closed after"),  # an RST may arrive before or after the client read the bytes
])
def test_only_cut_transfers_fail_with_every_attempt_described_and_nothing_kept(kind, says, server, tmp_path):
    server.routes["/a/" + SMALL] = (kind,)
    server.routes["/b/" + SMALL] = (kind,)
    dest = tmp_path / "mnist" / SMALL
    with pytest.raises(UsageProblem) as err:
        fetch(server, ["a", "b"], dest)
    msg = str(err.value)
    assert "\n" not in msg
    for m in ("a", "b"):
        for attempt in (1, 2):
            assert f"{server.mirror(m)}{SMALL} (attempt {attempt} of 2): " in msg, msg
    assert len(re.findall(says, msg)) == 4, msg
    assert f"Place the file at {dest}" in msg
    assert_clean(dest.parent, set())


def test_a_transfer_that_fails_once_is_retried_on_the_same_mirror(server, tmp_path):
    server.routes["/a/" + SMALL] = ("flaky", None, 1)
    dest = tmp_path / SMALL
    fetch(server, ["a"], dest)
    assert server.hits == ["/a/" + SMALL] * 2
    assert sha256_of(dest) == SHA256_GZ[SMALL.removesuffix(".gz")]
    assert_clean(tmp_path, {SMALL})


# ----------------------------------------------------------------------------------------------- wrong bytes


def test_wrong_checksum_is_not_kept_and_not_asked_for_again(server, tmp_path, data_dir):
    good = (data_dir / "mnist" / SMALL).read_bytes()
    evil = good[:-1] + bytes([good[-1] ^ 1])  # same length, one bit flipped
    server.routes["/evil/" + SMALL] = ("bytes", evil)
    dest = tmp_path / SMALL
    with pytest.raises(UsageProblem) as err:
        fetch(server, ["evil"], dest)
    msg = str(err.value)
    actual = __import__("hashlib").sha256(evil).hexdigest()
    assert f"{server.mirror('evil')}{SMALL}: sha256 {actual[:12]}... does not match the expected" in msg, msg
    assert server.hits == ["/evil/" + SMALL]  # the same mirror would serve the same bytes
    assert_clean(tmp_path, set())
    # with a good second mirror, the good file wins and the bad one never shows up under the final name
    server.hits.clear()
    server.routes["/good/" + SMALL] = ("good",)
    logs = []
    fetch(server, ["evil", "good"], dest, logs=logs)
    assert dest.read_bytes() == good
    assert any("wrong checksum" in m for m in logs)
    assert_clean(tmp_path, {SMALL})


def test_an_existing_truncated_file_is_reported_not_used(tmp_path, data_dir):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in FILES:
        data = (data_dir / "mnist" / f"{name}.gz").read_bytes()
        (folder / f"{name}.gz").write_bytes(data if name != "train-labels-idx1-ubyte" else data[:1000])
    with pytest.raises(UsageProblem, match=r"train-labels-idx1-ubyte.gz is truncated or corrupt .*delete it"):
        ensure_files(tmp_path, download=False)


# --------------------------------------------------------------------------------------- HTTP errors, stalls


def test_404_moves_on_at_once_503_is_retried(server, tmp_path):
    server.routes["/gone/" + SMALL] = ("status", 404)
    server.routes["/busy/" + SMALL] = ("status", 503)
    dest = tmp_path / SMALL
    with pytest.raises(UsageProblem) as err:
        fetch(server, ["gone", "busy"], dest)
    msg = str(err.value)
    assert f"{server.mirror('gone')}{SMALL}: HTTP 404 Not Found" in msg, msg
    assert f"{server.mirror('busy')}{SMALL} (attempt 2 of 2): HTTP 503 Service Unavailable" in msg, msg
    assert server.hits == ["/gone/" + SMALL] + ["/busy/" + SMALL] * 2
    assert_clean(tmp_path, set())


def test_a_stalled_server_times_out_and_is_retried(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "TIMEOUT_S", 0.3)
    server.routes["/slow/" + SMALL] = ("stall", 2.0)
    server.routes["/good/" + SMALL] = ("good",)
    dest = tmp_path / SMALL
    t0 = time.monotonic()
    fetch(server, ["slow", "good"], dest)
    assert time.monotonic() - t0 < 5
    assert server.hits == ["/slow/" + SMALL] * 2 + ["/good/" + SMALL]
    assert_clean(tmp_path, {SMALL})
    with pytest.raises(UsageProblem, match=r"\(attempt 2 of 2\): no answer within 0.3 s"):
        fetch(server, ["slow"], tmp_path / "again" / SMALL)
    assert_clean(tmp_path / "again", set())


def test_nobody_listening(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / SMALL
    with pytest.raises(UsageProblem, match="Connection refused"):
        download_verified(SMALL, [f"http://127.0.0.1:{port}/{SMALL}", f"nonsense://x/{SMALL}"], dest,
                          SHA256_GZ[SMALL.removesuffix(".gz")], log=lambda m: None)
    assert_clean(tmp_path, set())


# ------------------------------------------------------------------------------------------ through the CLI


def test_cli_reports_a_failed_download_in_one_line_and_leaves_nothing(cli, server, tmp_path):
    """One short line: where advbp looked (and why there), what failed in a few words, the one thing to do; the
    mnist/ folder made for the download is removed again."""
    out = tmp_path / "run"
    data = tmp_path / "data"
    data.mkdir()
    res = cli(["train", "--data-dir", str(data), "--out", str(out), "--epochs", "1", "--train-limit", "20",
               "--hidden", "5", "--backend", "numpy"],
              env={"ADVBP_MNIST_MIRRORS": f"{server.mirror('x')},{server.mirror('y')}"})
    assert res.exit_code == 2
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and res.stderr.strip().splitlines()[-1] == errors[0], res.stderr
    line = errors[0]
    assert f"MNIST not found in {data / 'mnist'} (data folder from --data-dir;" in line, line
    assert "2 mirror(s) tried, each: HTTP 404 Not Found" in line, line
    assert "Point --data-dir or $ADVBP_DATA_DIR at the folder that holds mnist/" in line, line
    assert len(line) - 2 * len(str(data)) < 330, line  # short, but for the paths
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not out.exists(), "a failed start left a run directory"
    assert list(data.iterdir()) == [], "a failed download left its folder behind"


def test_cli_downloads_then_trains(cli, server, tmp_path):
    (tmp_path / "data").mkdir()  # an explicit --data-dir must exist (a typo is reported, not created)
    for name in FILES:
        server.routes[f"/m/{name}.gz"] = ("good",)
    res = cli(["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1",
               "--train-limit", "20", "--eval-limit", "20", "--hidden", "5", "--backend", "numpy", "--json"],
              env={"ADVBP_MNIST_MIRRORS": server.mirror("m")})
    assert res.exit_code == 0, res.stderr
    assert res.stdout.lstrip().startswith("{")  # progress went to stderr, stdout is the JSON
    __import__("json").loads(res.stdout)
    assert_clean(tmp_path / "data" / "mnist", {f"{n}.gz" for n in FILES})

"""Starting and stopping ``jimunet serve`` for the tests: in a thread, or as the real command."""
from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import threading
import urllib.parse

import numpy as np
from foreground import FOREGROUND

from jimunet.app.server import make_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digit(seed=0, kind=7):
    """A stroke-like MNIST-style image (white on black, uint8 28x28x1), no data set needed."""
    img = np.zeros((28, 28), np.uint8)
    if kind == 7:
        img[6:9, 7:21] = 255
        for r in range(9, 23):
            c = 19 - (r - 9) // 2
            img[r, c - 1:c + 2] = 255
    else:  # a 1
        img[5:23, 13:16] = 255
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 40, (28, 28)).astype(np.uint8)
    return np.maximum(img, noise * (img == 0)).astype(np.uint8)[..., None]


def request(url, method="GET", path="/", body=None, headers=None, timeout=60):
    """``(status, headers, parsed JSON or raw bytes)`` for one HTTP request."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        if method != "HEAD" and r.getheader("Content-Type", "").startswith("application/json"):
            data = json.loads(data)
        return r.status, dict(r.getheaders()), data
    finally:
        conn.close()


class ThreadServer:
    """A ``jimunet.app.server`` server on a free localhost port, serving from a daemon thread;
    ``limits``: ``max_connections``, ``request_deadline``, ``send_timeout`` (``make_server``)."""

    def __init__(self, app, **limits):
        self.server = make_server(app, "127.0.0.1", 0, **limits)
        self.url = self.server.url
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class ServeProcess:
    """``python -m jimunet serve ARGS --port 0`` as a user starts it; ``url`` once it listens.

    ``close()`` (also called by the fixtures' finalizers) stops it with SIGTERM and kills it
    if it does not stop within 120 s, so no process outlives its test.
    """

    def __init__(self, *args, cwd=None, env=None, start_timeout=120):
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "src"), full_env.get("PYTHONPATH", "")])
        full_env.update(env or {})
        # as a terminal starts it (Ctrl-C must work), however the test run was started
        self.proc = subprocess.Popen([*FOREGROUND, "-m", "jimunet", "serve", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                     env=full_env)
        self.lines = queue.Queue()
        self._stdout = []
        self._pumper = threading.Thread(target=self._pump, daemon=True)
        self._pumper.start()
        self.url = None
        try:
            while self.url is None:
                line = self.lines.get(timeout=start_timeout)
                if line is None:
                    raise RuntimeError(f"jimunet serve exited early ({self.proc.wait()}): {self.proc.stderr.read()}")
                m = re.search(r"at (http://\S+/)", line)
                if m:
                    self.url = m.group(1)
        except BaseException:
            self.close()
            raise

    def _pump(self):
        for line in self.proc.stdout:
            self._stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def stop(self, sig=signal.SIGTERM, timeout=120):  # a bound on a hang: a loaded machine is slow
        """Send ``sig``; returns ``(exit code, stdout, stderr)``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._pumper.join(5)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return rc, "".join(self._stdout), err

    def close(self):
        if self.proc.poll() is None:
            self.stop()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()

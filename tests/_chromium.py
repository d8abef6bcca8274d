"""Open a page in headless Chromium and report what a person would see break: images that did not render, console
errors and uncaught exceptions.

Talks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-separated JSON),
so it needs nothing beyond the standard library and Debian's ``chromium`` package.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-pipe",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int) -> None:
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def _read_one(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> Any:
        want = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_one(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for i, msg in enumerate(self.events):
            if msg.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_one(deadline)
            if msg.get("method") == method:
                return msg
            self.events.append(msg)


def inspect_page(path: Path, *, timeout: float = 60) -> dict[str, Any]:
    """Load ``path`` (a local HTML file); return ``{"images": [(alt, rendered width, rendered height, natural width)],
    "errors": [...console errors and exceptions...], "title": ...}``."""
    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("no chromium executable on PATH")
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    # Chromium reads commands on fd 3 and writes answers on fd 4: hand it the pipe ends from fds >= 10 (so that no
    # end already sits on 3 or 4) and let the shell place them
    child_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
    child_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
    for fd in (to_chrome_r, from_chrome_w):
        os.close(fd)
    profile = tempfile.mkdtemp(prefix="entrolab-chromium-")

    def place_fds() -> None:  # in the child, before exec: the pipe ends onto 3 and 4 (the sources sit at >= 10)
        os.dup2(child_r, 3)
        os.dup2(child_w, 4)

    proc = subprocess.Popen(
        [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=False,  # subprocess would close 3 and 4 after place_fds otherwise
        preexec_fn=place_fds,
    )
    os.close(child_r)
    os.close(child_w)
    pipe = _Pipe(proc, to_chrome_w, from_chrome_r)
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout=timeout)
        script = (
            "JSON.stringify({title: document.title, images: Array.from(document.images).map("
            "i => [i.alt, i.getBoundingClientRect().width, i.getBoundingClientRect().height, i.naturalWidth])})"
        )
        res = pipe.call("Runtime.evaluate", {"expression": script, "returnByValue": True}, session=session)
        page = json.loads(res["result"]["value"])
        errors = []
        for msg in pipe.events:
            params = msg.get("params", {})
            if msg.get("method") == "Runtime.exceptionThrown":
                errors.append(str(params.get("exceptionDetails", {}).get("text")))
            elif msg.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(json.dumps(params.get("args")))
            elif msg.get("method") == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(str(params["entry"].get("text")))
        with contextlib.suppress(RuntimeError, TimeoutError):  # the browser may close the pipe before answering
            pipe.call("Browser.close", timeout=10)
        return {"title": page["title"], "images": [tuple(i) for i in page["images"]], "errors": errors}
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)

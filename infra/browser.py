"""Headless Chromium driven over the DevTools protocol: open a page, wait until it shows something, read it, take a
screenshot. For checking what the MLflow UI shows (a React app, drawn after its own API calls, charts when scrolled
into view): ``--dump-dom`` with a virtual-time budget returns before the charts are drawn on a busy machine, so this
polls the live page in real time instead.

Chromium runs with ``infra.offline.CHROMIUM_FLAGS`` (nothing but loopback), a throwaway profile, and its DevTools
endpoint on 127.0.0.1 on a port it picks itself.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.sync.client import ClientConnection, connect

from infra.offline import chromium_command


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium and its first tab. ``with Browser() as b: b.open(url); b.wait(js)``."""

    def __init__(self, width: int = 1400, height: int = 900, start_timeout: float = 60) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="franca-chromium-")
        profile, self._log = Path(self._tmp.name) / "profile", Path(self._tmp.name) / "chromium.log"
        cmd = chromium_command(profile, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                               f"--window-size={width},{height}", "--hide-scrollbars", "about:blank")
        with self._log.open("wb") as log:  # a file, not a pipe nobody reads: Chromium logs a lot
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._ids = itertools.count(1)
        try:
            port = self._devtools_port(profile / "DevToolsActivePort", start_timeout)
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no *_proxy for loopback
            with direct.open(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
                pages = [t for t in json.load(resp) if t["type"] == "page"]
            self._ws: ClientConnection = connect(pages[0]["webSocketDebuggerUrl"], max_size=None,
                                                 open_timeout=10)
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, active_port: Path, timeout: float) -> int:
        # Chromium writes the port it bound into the profile once its DevTools endpoint listens.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._log.read_text(errors="replace")
                raise BrowserError(f"Chromium exited {self._proc.returncode} at start:\n{err[-3000:]}")
            if active_port.exists() and (lines := active_port.read_text().split("\n"))[0].isdigit():
                return int(lines[0])
            time.sleep(0.1)
        raise BrowserError(f"Chromium's DevTools endpoint did not come up in {timeout} s")

    def send(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events in between are dropped)."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def open(self, url: str) -> None:
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when a promise)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value. On timeout the error shows the page's text."""
        deadline, error = time.monotonic() + timeout, ""
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError as e:  # e.g. no document.body yet while the page loads
                value, error = None, str(e)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise BrowserError(f"the page did not show {what or expression[:200]} in {timeout} s "
                                   f"({error or 'no error'}); it shows:\n{text[:3000]}")
            time.sleep(0.25)

    def text(self) -> str:
        return str(self.evaluate("document.body.innerText"))

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._tmp.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

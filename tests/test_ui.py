"""The live seat map (/ui/events/{eventId}).

On the TestClient: the page is a data-free shell with strict headers, its assets are
served by name only, and its data endpoint needs an admin token. In headless Chromium
against a real `seatres serve`: the page asks for a token, refuses a customer's and a
bad one, and with an admin token shows a seat turn held, then booked, as it happens
through the API. The screenshot is kept in test-artifacts/ and in pytest's tmp_path."""

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient
from websockets.sync.client import ClientConnection, connect

from seatres.embedded import RedisServer
from tests.conftest import ADMIN, ALICE, put_event
from tests.processes import api_server

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")


def token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


# The page and its assets


def test_page_is_a_data_free_shell_with_strict_headers(client: TestClient) -> None:
    response = client.get("/ui/events/gala")  # no token: a navigation cannot send one
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    # The same bytes for every event, known or not: the shell holds no data.
    assert "gala" not in response.text
    assert client.get("/ui/events/no-such-event").content == response.content
    # No inline script or style for the policy to block.
    assert not re.search(r"<script(?![^>]*\bsrc=)", response.text)
    assert "<style" not in response.text and "style=" not in response.text


def test_page_rejects_a_malformed_event_id(client: TestClient) -> None:
    response = client.get("/ui/events/bad%20id")
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"


def test_assets_the_page_links_are_served_by_name_only(client: TestClient) -> None:
    page = client.get("/ui/events/gala").text
    linked = re.findall(r'(?:src|href)="\.\./static/([^"]+)"', page)
    assert sorted(linked) == ["seat_map.css", "seat_map.js"]
    for name, media_type in [("seat_map.js", "text/javascript"), ("seat_map.css", "text/css")]:
        response = client.get(f"/ui/static/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-cache"
        etag = response.headers["etag"]
        again = client.get(f"/ui/static/{name}", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
    for name in ["seat_map.html", "missing.js", "..%2Fui.py", "..%2F..%2Fsettings.py"]:
        response = client.get(f"/ui/static/{name}")
        assert response.status_code == 404, name
        assert response.json()["code"] == "not_found"


def test_script_writes_text_only() -> None:
    script = (REPO_ROOT / "seatres/http/static/seat_map.js").read_text()
    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("]:
        assert sink not in script, sink


# The admin-only data endpoint


def test_seat_map_data_needs_an_admin_token(client: TestClient) -> None:
    put_event(client, "gala", ["A1", "A2"])
    response = client.get("/ui/events/gala/seats")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    bad = client.get("/ui/events/gala/seats", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    customer = client.get("/ui/events/gala/seats", headers=ALICE)
    assert customer.status_code == 403
    assert customer.json()["code"] == "forbidden"
    assert client.get("/ui/events/nope/seats", headers=ADMIN).json()["code"] == "not_found"


def test_seat_map_data_shows_free_held_and_booked(client: TestClient) -> None:
    put_event(client, "gala", ["A1", "A2", "A3"])
    held = client.post("/reservations", json={"eventId": "gala", "seatId": "A2"}, headers=ALICE)
    booked = client.post("/reservations", json={"eventId": "gala", "seatId": "A3"}, headers=ALICE)
    confirmed = client.post(f"/reservations/{booked.json()['id']}/confirm", headers=ALICE)
    assert (held.status_code, booked.status_code, confirmed.status_code) == (201, 201, 200)

    response = client.get("/ui/events/gala/seats", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    expected = {
        "eventId": "gala",
        "seats": [
            {"seatId": "A1", "status": "free"},
            {"seatId": "A2", "status": "held"},
            {"seatId": "A3", "status": "booked"},
        ],
        "nextCursor": None,
    }
    assert response.json() == expected
    # The same body as the public seat page, and its paging.
    assert client.get("/events/gala/seats", headers=ALICE).json() == expected
    first = client.get("/ui/events/gala/seats?limit=2", headers=ADMIN).json()
    assert [s["seatId"] for s in first["seats"]] == ["A1", "A2"]
    rest = client.get(f"/ui/events/gala/seats?limit=2&cursor={first['nextCursor']}", headers=ADMIN)
    assert rest.json()["seats"] == [{"seatId": "A3", "status": "booked"}]
    for limit in ["0", "1001", "x"]:
        bad = client.get(f"/ui/events/gala/seats?limit={limit}", headers=ADMIN)
        assert bad.status_code == 400, limit


# In headless Chromium


class Page:
    """One Chromium tab driven over the DevTools protocol (JSON over a websocket)."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._next_id = 0

    def send(self, method: str, timeout: float = 15, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        request_id = self._next_id
        self._ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if message.get("id") != request_id:
                continue  # an event: not needed here
            if "error" in message:
                raise RuntimeError(f"{method}: {message['error']}")
            result: dict[str, Any] = message["result"]
            return result

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:  # e.g. while the document is being replaced
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.evaluate(
                    "[document.body && document.body.dataset.state,"
                    " document.getElementById('message')?.textContent]"
                )
                raise AssertionError(f"timed out waiting for {what}; page state, message: {state}")
            time.sleep(0.1)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def screenshot(self) -> bytes:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(data["data"])


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI: apt-get install chromium")
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium); in CI (CI=true) this fails")


@contextmanager
def chromium(workdir: Path) -> Iterator[Page]:
    """Headless Chromium with a fresh profile; stopped by PID (its process group) after."""
    profile = workdir / "chromium-profile"
    args = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    log_path = workdir / "chromium.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its renderer and GPU processes share its group
        )
    try:
        # Chromium writes the port it picked to DevToolsActivePort in the profile.
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        tab = next(t for t in targets if t["type"] == "page")
        with connect(tab["webSocketDebuggerUrl"], open_timeout=10, max_size=None) as ws:
            page = Page(ws)
            page.send(
                "Emulation.setDeviceMetricsOverride",
                width=1000,
                height=520,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield page
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with suppress(ProcessLookupError):  # whatever is left of its group (renderers)
            os.killpg(proc.pid, signal.SIGKILL)


def cell(seat: str, prop: str) -> str:
    element = f"document.querySelector('#seats [data-seat=\"{seat}\"]')"
    if prop == "background":
        return f"({element} && getComputedStyle({element}).backgroundColor)"
    return f"({element} && {element}.dataset.status)"


def hold(api: httpx.Client, event: str, seat: str) -> str:
    """Alice holds the seat through the API; the reservation id."""
    response = api.post("/reservations", json={"eventId": event, "seatId": seat}, headers=ALICE)
    assert response.status_code == 201, response.text
    reservation_id: str = response.json()["id"]
    return reservation_id


def count(name: str) -> str:
    return f"document.getElementById('count-{name}').textContent"


def test_seat_map_in_headless_chromium(redis_server: RedisServer, tmp_path: Path) -> None:
    require_chromium()
    event = "ui-" + secrets.token_hex(4)
    seats = [f"{row}{n:02d}" for row in "ABCD" for n in range(1, 13)]
    with (
        api_server(redis_server.url, tmp_path / "api.log") as base,
        httpx.Client(base_url=base, timeout=10) as api,
        chromium(tmp_path) as page,
    ):
        created = api.put(f"/events/{event}", json={"name": "Gala", "seats": seats}, headers=ADMIN)
        assert created.status_code == 201, created.text
        url = f"{base}/ui/events/{event}"

        # No token: the page says what it needs.
        page.navigate(url)
        message = page.wait_for(
            "document.body.dataset.state === 'login' && document.getElementById('message')"
            ".textContent",
            "the token form",
        )
        assert "needs an admin token" in message
        assert page.evaluate("document.getElementById('login').hidden") is False
        # A customer's token typed into the form, then a bad one in the fragment.
        page.evaluate(
            f"document.getElementById('token').value = '{token_of(ALICE)}';"
            " document.getElementById('login').requestSubmit()"
        )
        page.wait_for(
            "document.getElementById('message').textContent.includes('not an admin token')",
            "the not-admin message",
        )
        page.navigate(f"{url}#token=not-a-token")
        page.wait_for(
            "document.getElementById('message').textContent.includes('token was refused')",
            "the refused-token message",
        )
        assert page.evaluate("document.getElementById('seats').children.length") == 0

        # The admin's token: every seat drawn, all free; the token leaves the address bar.
        page.navigate(f"{url}#token={token_of(ADMIN)}")
        page.wait_for(
            "document.body.dataset.state === 'live' && [...document.querySelectorAll("
            f"'#seats .seat')].filter(c => c.dataset.status === 'free').length === {len(seats)}",
            "all seats drawn free",
        )
        assert page.evaluate("location.hash") == ""
        assert page.evaluate(count("free")) == str(len(seats))
        free_colour = page.evaluate(cell("B03", "background"))

        # A customer holds B03 through the API: amber on the map within a few seconds.
        rid = hold(api, event, "B03")
        page.wait_for(f"{cell('B03', 'status')} === 'held'", "B03 held")
        held_colour = page.evaluate(cell("B03", "background"))
        assert held_colour != free_colour
        page.wait_for(f"{count('held')} === '1'", "held count 1")

        # Confirmed: red.
        assert api.post(f"/reservations/{rid}/confirm", headers=ALICE).status_code == 200
        page.wait_for(f"{cell('B03', 'status')} === 'booked'", "B03 booked")
        booked_colour = page.evaluate(cell("B03", "background"))
        assert booked_colour not in (free_colour, held_colour)
        page.wait_for(f"{count('booked')} === '1' && {count('held')} === '0'", "counts 0/1")

        # One more hold so that the screenshot shows all three colours.
        hold(api, event, "C07")
        page.wait_for(f"{cell('C07', 'status')} === 'held'", "C07 held")
        assert page.evaluate(cell("C07", "background")) == held_colour
        assert page.evaluate(cell("A01", "background")) == free_colour

        keep_screenshot(page.screenshot(), "seat_map.png", tmp_path)

        # A bigger event: three pages of seats, drawn as dots; the token stayed in the tab.
        big = event + "-big"
        many = [f"S{n:04d}" for n in range(2500)]
        created = api.put(f"/events/{big}", json={"name": "Arena", "seats": many}, headers=ADMIN)
        assert created.status_code == 201, created.text
        hold(api, big, "S2499")
        page.navigate(f"{base}/ui/events/{big}")
        page.wait_for(
            "document.body.dataset.state === 'live'"
            f" && document.querySelectorAll('#seats .seat').length === {len(many)}",
            "2500 seats drawn",
        )
        assert page.evaluate(cell("S2499", "status")) == "held"
        assert page.evaluate("document.getElementById('seats').classList.contains('compact')")
        keep_screenshot(page.screenshot(), "seat_map_large.png", tmp_path)


def keep_screenshot(png: bytes, name: str, tmp_path: Path) -> None:
    assert png.startswith(b"\x89PNG")
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / name
    kept.write_bytes(png)
    shutil.copyfile(kept, tmp_path / name)
    print(f"seat map screenshot: {kept} (and {tmp_path / name})")

// Live seat map of one event (page /ui/events/{eventId}).
//
// The page carries no data: this script polls the JSON API with an admin bearer token
// every REFRESH_MS, one refresh after the other, so a slow service or a huge event
// slows the refresh down instead of piling requests up. The token comes from the URL
// fragment (#token=..., never sent to the server and removed from the address bar at
// once) or from the form, and is kept in sessionStorage for this tab only.
//
// Seats are cells with data-seat and data-status (free / held / booked); the style
// sheet colours them by data-status. Text goes in with textContent only.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const PAGE_SIZE = 1000; // the API's largest page
  const LABELS_UP_TO = 2000; // seats; bigger events are drawn as unlabelled dots
  const MAX_ROWS = 500;
  const STORAGE_KEY = "seatres.adminToken";

  const MARKER = "/ui/events/";
  const path = location.pathname;
  const prefix = path.slice(0, path.lastIndexOf(MARKER)); // "" unless mounted under a prefix
  const eventId = decodeURIComponent(path.slice(prefix.length + MARKER.length));
  const eventUrl = `${prefix}/events/${encodeURIComponent(eventId)}`;
  const seatsUrl = `${prefix}/ui/events/${encodeURIComponent(eventId)}/seats`;

  const byId = (id) => document.getElementById(id);
  const cells = new Map(); // seat id -> cell
  let seatOrder = ""; // the seat ids drawn, joined: redraw only when the list changes
  let token = null;
  let timer = null;
  let run = 0; // bumped on each new token: a refresh of an older run stops quietly

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail || `HTTP ${status}`);
      this.status = status;
    }
  }

  function readStorage() {
    try {
      return sessionStorage.getItem(STORAGE_KEY);
    } catch {
      return null; // storage disabled: the token lives in this page only
    }
  }

  function writeStorage(value) {
    try {
      if (value) sessionStorage.setItem(STORAGE_KEY, value);
      else sessionStorage.removeItem(STORAGE_KEY);
    } catch {
      // storage disabled
    }
  }

  function takeTokenFromFragment() {
    const value = new URLSearchParams(location.hash.slice(1)).get("token");
    if (value) {
      writeStorage(value.trim());
      history.replaceState(null, "", location.pathname + location.search);
    }
    return value ? value.trim() : null;
  }

  function show(state, message) {
    document.body.dataset.state = state;
    byId("message").textContent = message;
  }

  function askForToken(message) {
    clearTimeout(timer);
    run += 1;
    token = null;
    writeStorage(null);
    show("login", message);
    byId("login").hidden = false;
    byId("token").focus();
  }

  async function getJson(url) {
    const response = await fetch(url, {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    if (!response.ok) {
      let detail = "";
      try {
        detail = (await response.json()).detail || "";
      } catch {
        // not a problem+json body
      }
      throw new ApiError(response.status, detail);
    }
    return response.json();
  }

  async function loadSeats() {
    const seats = [];
    let cursor = null;
    do {
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (cursor) query.set("cursor", cursor);
      const page = await getJson(`${seatsUrl}?${query}`);
      for (const seat of page.seats) seats.push(seat);
      cursor = page.nextCursor;
    } while (cursor);
    return seats;
  }

  // Seats are drawn in rows: "B12" is seat 12 of row "B" (the id without its trailing
  // number), in natural order (B2 before B10). Ids that do not fit that pattern, or too
  // many rows to be one, are drawn as one block.
  const collator = new Intl.Collator("en", { numeric: true });
  const rowOf = (seatId) => /^(.*?)\d+$/.exec(seatId)?.[1] ?? "";

  function rowsOf(seatIds) {
    const sorted = [...seatIds].sort(collator.compare);
    const rows = new Map();
    for (const seatId of sorted) {
      const row = rowOf(seatId);
      if (!rows.has(row)) rows.set(row, []);
      rows.get(row).push(seatId);
    }
    if (rows.size > 1 && rows.size <= MAX_ROWS && rows.size * 2 <= sorted.length) return rows;
    return new Map([["", sorted]]);
  }

  function drawCells(seatIds) {
    const grid = byId("seats");
    const labelled = seatIds.length <= LABELS_UP_TO;
    const fragment = document.createDocumentFragment();
    cells.clear();
    for (const [row, rowSeats] of rowsOf(seatIds)) {
      const line = document.createElement("div");
      line.className = "row";
      const label = document.createElement("span");
      label.className = "row-label";
      label.textContent = row;
      const block = document.createElement("div");
      block.className = "row-seats";
      for (const seatId of rowSeats) {
        const cell = document.createElement("span");
        cell.className = "seat";
        cell.dataset.seat = seatId;
        if (labelled) cell.textContent = seatId;
        cells.set(seatId, cell);
        block.append(cell);
      }
      line.append(label, block);
      fragment.append(line);
    }
    grid.classList.toggle("compact", !labelled);
    grid.replaceChildren(fragment);
    seatOrder = seatIds.join(" ");
  }

  function render(summary, seats) {
    byId("title").textContent = `${summary.name} (${summary.eventId})`;
    document.title = `${summary.name} · seat map`;
    for (const name of ["total", "free", "held", "booked"]) {
      byId(`count-${name}`).textContent = String(summary.seats[name]);
    }
    const seatIds = seats.map((seat) => seat.seatId);
    if (seatIds.join(" ") !== seatOrder) drawCells(seatIds);
    for (const { seatId, status } of seats) {
      const cell = cells.get(seatId);
      if (cell.dataset.status !== status) {
        cell.dataset.status = status;
        cell.title = `${seatId}: ${status}`;
      }
    }
    byId("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  async function refresh(thisRun) {
    try {
      // The admin-only seats first: a missing, bad or customer token shows up here.
      const seats = await loadSeats();
      const summary = await getJson(eventUrl);
      if (thisRun !== run) return;
      render(summary, seats);
      show("live", `Live, every ${REFRESH_MS / 1000} s`);
    } catch (error) {
      if (thisRun !== run) return;
      if (!(error instanceof ApiError)) {
        show("stale", `Cannot reach the service (${error.message}); retrying…`);
      } else if (error.status === 401) {
        askForToken(`The token was refused (${error.message}). Enter a valid admin token.`);
        return;
      } else if (error.status === 403) {
        askForToken("This token is not an admin token: the seat map needs scope seatres:admin.");
        return;
      } else if (error.status === 404) {
        show("error", `There is no event "${eventId}" (yet); checking again…`);
      } else {
        show("stale", `The service answered ${error.status} (${error.message}); retrying…`);
      }
    }
    timer = setTimeout(refresh, REFRESH_MS, thisRun);
  }

  function start(value) {
    token = value;
    byId("login").hidden = true;
    show("loading", "Loading…");
    clearTimeout(timer);
    run += 1;
    refresh(run);
  }

  byId("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = byId("token").value.trim();
    byId("token").value = "";
    if (!value) return;
    writeStorage(value);
    start(value);
  });

  // A token pasted into the address bar of the open page.
  window.addEventListener("hashchange", () => {
    const value = takeTokenFromFragment();
    if (value) start(value);
  });

  const initial = takeTokenFromFragment() || readStorage();
  if (initial) start(initial);
  else askForToken("This page needs an admin token: enter one, or open it as …#token=<token>.");
})();

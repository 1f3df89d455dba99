// relay-client.js — the browser client for relayd. No dependencies, no build,
// no side effects (global.js is the entry that sets globalThis.RelayClient;
// the relay's own GET /relay-client.js serves this module with that line added).
// Types: relay-client.d.ts.
//
//   import { RelayClient } from "relayd-client";       // or from "/relay-client.js"
//   const client = new RelayClient("wss://relay.example.com/ws", { id: "alice", token: getToken });
//   client.addEventListener("message", (e) => show(e.detail));
//   client.addEventListener("state", (e) => console.log(e.detail)); // connecting | open | closed
//   client.addEventListener("closed", (e) => console.log(e.detail)); // { code, reason }: ended for good
//   client.addEventListener("error", (e) => console.warn(e.detail.error)); // what went wrong, as it happens
//   const ack = await client.send({ receiver_id: "bob", content: "hi" });
//
// What it keeps for the application (what EventSource gave for free, and more):
// * reconnects by itself, full-jitter exponential backoff (0.5 s doubling to 30 s);
//   1001 (server restarting) waits a random 0–5 s; 4009, 4010 and 4001 reconnect at once;
//   1000 (normal), 1009 (too big) and 4000 (replaced by a newer connection) end it;
// * resumes with last_id and epoch, and never hands the same message to the
//   application twice (a welcome with a new epoch starts the count again);
// * refreshes the token before it expires when `token` is an async function;
// * falls back to SSE (/events) when the WebSocket cannot be opened;
// * reacts to the browser's offline/online events, drops a connection that
//   does not bring its welcome within `connectTimeout`, and finds a dead
//   WebSocket (a laptop that slept, a NAT that forgot it) by probing it when
//   nothing has arrived for `heartbeat` ms, on `online` and when the tab
//   becomes visible again.

export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30000;
export const SHUTDOWN_SPREAD_MS = 5000;

const NO_RECONNECT = new Set([1000, 1009, 4000]);
const AT_ONCE = new Set([4001, 4009, 4010]);

/** Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, { base = BACKOFF_BASE_MS, cap = BACKOFF_CAP_MS, random = Math.random } = {}) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(Math.max(0, attempt), 30));
  return random() * ceiling;
}

/** The delay before reconnecting after a close with `code`, or null for "do not reconnect". */
export function reconnectDelay(code, attempt, { random = Math.random, ...backoff } = {}) {
  if (NO_RECONNECT.has(code)) return null;
  if (AT_ONCE.has(code)) return 0;
  if (code === 1001) return random() * SHUTDOWN_SPREAD_MS;
  return backoffDelay(attempt, { random, ...backoff });
}

/** The SSE URL for a WebSocket URL: ws→http, wss→https, the path's last /ws → /events. */
export function sseUrl(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  const at = url.pathname.lastIndexOf("/ws");
  if (at >= 0 && (at + 3 === url.pathname.length || url.pathname[at + 3] === "/")) {
    url.pathname = url.pathname.slice(0, at) + "/events" + url.pathname.slice(at + 3);
  }
  return url.toString();
}

/** The `exp` claim of a JWT in milliseconds since the epoch, or null if it has none. */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1];
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/**
 * Where the client stands in its id's message sequence: `epoch` and the
 * highest `lastId` handed to the application. It decides which messages are
 * new (never twice) and what to resume from.
 */
export class ResumePoint {
  constructor(lastId = 0, epoch = undefined) {
    this.lastId = Number(lastId) || 0;
    this.epoch = epoch;
  }

  /**
   * Take a welcome. A new epoch, or a sequence that is behind what we have
   * seen (the relay started counting again), starts the count from 0 so
   * that messages of the new sequence are not taken for duplicates.
   */
  welcome(frame) {
    const restarted = (this.epoch !== undefined && frame.epoch !== this.epoch) || frame.last_id < this.lastId;
    if (restarted) this.lastId = 0;
    this.epoch = frame.epoch;
    return restarted;
  }

  /** True when `message` is new (and remember it); false for one already handed over. */
  accept(message) {
    if (message.id === null || message.id === undefined) return true; // broadcast: never replayed
    if (message.id <= this.lastId) return false;
    this.lastId = message.id;
    return true;
  }

  /** The resume query parameters. */
  params() {
    const params = { last_id: String(this.lastId) };
    if (this.epoch !== undefined) params.epoch = this.epoch;
    return params;
  }
}

/** A send that the relay refused (an `error` frame), or that could not be made. */
export class RelayError extends Error {
  constructor(detail, frame = null) {
    super(detail);
    this.name = "RelayError";
    this.frame = frame;
    this.code = frame ? frame.error : "closed";
  }
}

function withQuery(base, params) {
  const url = new URL(base);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  return url.toString();
}

/** The WebSocket half: one socket, frames in and out. */
class WebSocketLink {
  constructor(client, url) {
    this.kind = "websocket";
    this.client = client;
    this.opened = false;
    this.socket = new client.WebSocket(url);
    this.socket.onopen = () => { this.opened = true; };
    this.socket.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      client._frame(this, frame);
    };
    this.socket.onclose = (event) => client._linkClosed(this, event.code, this.opened, event.reason || "");
  }

  send(frame) {
    this.socket.send(JSON.stringify(frame));
  }

  close(code = 1000, reason = "") {
    this.socket.onclose = null;
    this.socket.onmessage = null;
    try { this.socket.close(code, reason); } catch { this.socket.close(); }
  }
}

/** The SSE half: an EventSource we reconnect ourselves (its own retry is turned off). */
class EventSourceLink {
  constructor(client, url) {
    this.kind = "sse";
    this.client = client;
    this.opened = false;
    this.source = new client.EventSource(url);
    this.source.onopen = () => { this.opened = true; };
    const frame = (event) => {
      let parsed;
      try { parsed = JSON.parse(event.data); } catch { return; }
      client._frame(this, parsed);
    };
    this.source.addEventListener("welcome", frame);
    this.source.addEventListener("message", frame);
    this.source.addEventListener("close", (event) => {
      let code = 1006;
      let reason = "";
      try { ({ code, reason = "" } = JSON.parse(event.data)); } catch { /* keep 1006 */ }
      this.source.close();
      client._linkClosed(this, code, true, reason);
    });
    this.source.onerror = () => {
      this.source.close();
      client._linkClosed(this, 1006, this.opened);
    };
  }

  close() {
    this.source.close();
  }
}

export class RelayClient extends EventTarget {
  /**
   * @param {string} url the WebSocket URL (ws://host:port/ws)
   * @param {object} options id, token (string or async function), lastId, epoch, transports,
   *   connectTimeout (ms, default 10000), refreshMargin (ms before exp, default 30000),
   *   heartbeat (ms of silence before probing the WebSocket, default 45000; 0: never),
   *   probeTimeout (ms a probe may take before the connection is declared dead, default 10000);
   *   WebSocket, EventSource, fetch and random can be replaced (tests).
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.id = options.id;
    this.transports = options.transports || ["websocket", "sse"];
    this.connectTimeout = options.connectTimeout ?? 10000;
    this.refreshMargin = options.refreshMargin ?? 30000;
    this.heartbeat = options.heartbeat ?? 45000;
    this.probeTimeout = options.probeTimeout ?? 10000;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.EventSource = options.EventSource || globalThis.EventSource;
    this.fetch = options.fetch || (globalThis.fetch && globalThis.fetch.bind(globalThis));
    this.random = options.random || Math.random;
    this._token = options.token;
    this._resume = new ResumePoint(options.lastId, options.epoch);
    this._resuming = options.lastId !== undefined || options.epoch !== undefined;
    this._state = "connecting";
    this._stopped = false;
    this._closeCode = null;
    this._closeReason = null;
    this._unusable = new Set(); // transports this environment cannot construct
    this._attempt = 0;
    this._connects = 0;
    this._link = null;
    this._welcomed = false;
    this._currentToken = undefined;
    this._timers = new Set();
    this._refreshTimer = null;
    this._connectTimer = null;
    this._heartbeatTimer = null;
    this._lastFrameAt = 0;
    this._pending = new Map();
    this._refs = 0;
    this._onOnline = () => this._online();
    this._onOffline = () => this._offline();
    this._onVisible = () => {
      if (globalThis.document.visibilityState === "visible") this._probe();
    };
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("online", this._onOnline);
      globalThis.addEventListener("offline", this._onOffline);
    }
    if (globalThis.document && typeof globalThis.document.addEventListener === "function") {
      globalThis.document.addEventListener("visibilitychange", this._onVisible);
    }
    queueMicrotask(() => {
      // after the caller has added its listeners, so that they see "connecting" too
      if (this._stopped) return;
      this._emit("state", "connecting");
      this._connect();
    });
  }

  /** "connecting" | "open" | "closed". */
  get state() { return this._state; }
  /** The highest message id handed to the application in `epoch`. */
  get lastId() { return this._resume.lastId; }
  /** The epoch of the latest welcome. */
  get epoch() { return this._resume.epoch; }
  /** "websocket" or "sse" while connected, else null. */
  get transport() { return this._welcomed && this._link ? this._link.kind : null; }
  /** Once closed for good: the close code that ended it (1000 after close()), else null. */
  get closeCode() { return this._closeCode; }
  /** Once closed for good: the reason that came with closeCode, else null. */
  get closeReason() { return this._closeReason; }

  /**
   * Send a message to other clients: `{receiver_id | receiver_ids | broadcast, content}`.
   * Resolves with the ack frame; rejects with a RelayError on an `error` frame or on close.
   */
  send(message) {
    if (this._state !== "open" || !this._link) {
      return Promise.reject(new RelayError("not connected"));
    }
    if (this._link.kind === "sse") return this._sendOverHttp(message);
    const ref = `r${++this._refs}`;
    return new Promise((resolve, reject) => {
      this._pending.set(ref, { resolve, reject });
      this._link.send({ ...message, type: "send", ref });
    });
  }

  /** Close with 1000 and stop reconnecting. */
  close() {
    this._stopped = true;
    if (typeof globalThis.removeEventListener === "function") {
      globalThis.removeEventListener("online", this._onOnline);
      globalThis.removeEventListener("offline", this._onOffline);
    }
    if (globalThis.document && typeof globalThis.document.removeEventListener === "function") {
      globalThis.document.removeEventListener("visibilitychange", this._onVisible);
    }
    this._drop("client closed");
    this._end(1000, "client closed");
  }

  // Connecting

  async _connect() {
    this._clearTimers();
    if (this._stopped) return;
    this._setState("connecting");
    if (globalThis.navigator && globalThis.navigator.onLine === false) return; // wait for "online"
    const attempt = ++this._connects; // a later call (an "online" event) supersedes this one
    let token;
    try {
      token = typeof this._token === "function" ? await this._token() : this._token;
    } catch (error) {
      if (attempt !== this._connects || this._stopped) return;
      this._error(error, null);
      this._retry(1006, "the token function failed");
      return;
    }
    if (this._stopped || this._link || attempt !== this._connects) return;
    this._currentToken = token;
    this._open(0);
  }

  _open(index) {
    const kind = this.transports[index];
    const params = { id: this.id, token: this._currentToken, ...(this._resuming ? this._resume.params() : {}) };
    this._transportIndex = index;
    this._welcomed = false;
    this._clearTimer(this._connectTimer);
    if (this._unusable.has(kind)) {
      this._linkFailed(index);
      return;
    }
    const Link = kind === "sse" ? EventSourceLink : WebSocketLink;
    const Constructor = kind === "sse" ? this.EventSource : this.WebSocket;
    try {
      if (typeof Constructor !== "function") {
        throw new RelayError(`this environment has no ${kind === "sse" ? "EventSource" : "WebSocket"}`);
      }
      this._link = new Link(this, withQuery(kind === "sse" ? sseUrl(this.url) : this.url, params));
    } catch (error) {
      // It cannot be constructed here (no such global, a malformed URL): it never will be.
      this._link = null;
      this._unusable.add(kind);
      this._error(error, kind);
      this._linkFailed(index);
      return;
    }
    this._connectTimer = this._later(this.connectTimeout, () => {
      if (!this._welcomed) this._linkClosed(this._link, 1006, false);
    });
  }

  _linkFailed(index) {
    if (index + 1 < this.transports.length) this._open(index + 1);
    else if (this.transports.every((kind) => this._unusable.has(kind))) {
      this._stopped = true;
      this._end(1006, "no transport can be used here: " + this.transports.join(", "));
    } else this._retry(1006, "could not connect");
  }

  _linkClosed(link, code, opened, reason = "") {
    if (link !== this._link) return;
    const welcomed = this._welcomed;
    link.close();
    this._link = null;
    this._welcomed = false;
    this._rejectPending("connection closed");
    if (this._stopped) return;
    if (!welcomed && !opened && link.kind === "websocket") {
      this._linkFailed(this._transportIndex); // the WebSocket could not be opened: try the next transport
      return;
    }
    this._retry(code, reason);
  }

  _retry(code, reason = "") {
    this._clearTimers();
    const delay = reconnectDelay(code, this._attempt, { random: this.random });
    if (delay === null) {
      this._stopped = true;
      this._end(code, reason);
      return;
    }
    if (delay > 0) this._attempt += 1;
    this._setState("connecting");
    this._later(delay, () => this._connect());
  }

  // Frames

  _frame(link, frame) {
    if (link !== this._link) return;
    this._lastFrameAt = Date.now();
    if (frame.type === "welcome") {
      this._welcomed = true;
      this._attempt = 0;
      this._resuming = true;
      this._resume.welcome(frame);
      this._clearTimer(this._connectTimer);
      this._scheduleRefresh();
      this._scheduleHeartbeat(this.heartbeat);
      this._setState("open");
      this._emit("welcome", frame);
    } else if (frame.type === "message") {
      if (this._resume.accept(frame)) this._emit("message", frame);
    } else if (frame.type === "ack" || frame.type === "error") {
      const pending = this._pending.get(frame.ref);
      if (!pending) return;
      this._pending.delete(frame.ref);
      if (frame.type === "ack") pending.resolve(frame);
      else pending.reject(new RelayError(frame.detail || frame.error, frame));
    }
  }

  // Dead connections. The relay's pings are answered by the browser itself and
  // never reach JavaScript, so a silent WebSocket is probed with a frame that
  // always gets a reply: a `refresh` with the current token (acked, or an
  // error frame; either proves the connection alive).

  _scheduleHeartbeat(delay) {
    this._clearTimer(this._heartbeatTimer);
    this._heartbeatTimer = null;
    if (!this.heartbeat || !this._link || this._link.kind !== "websocket") return;
    this._heartbeatTimer = this._later(delay, () => {
      const idle = Date.now() - this._lastFrameAt;
      if (idle < this.heartbeat) this._scheduleHeartbeat(this.heartbeat - idle);
      else this._probe();
    });
  }

  _probe() {
    const link = this._link;
    if (!link || link.kind !== "websocket" || !this._welcomed) return;
    const sentAt = Date.now();
    const ref = `p${++this._refs}`;
    this._pending.set(ref, { resolve() {}, reject() {} });
    link.send({ type: "refresh", ref, token: this._currentToken || "-" });
    this._clearTimer(this._heartbeatTimer);
    this._heartbeatTimer = this._later(this.probeTimeout, () => {
      if (link !== this._link) return;
      this._pending.delete(ref);
      if (this._lastFrameAt >= sentAt) this._scheduleHeartbeat(this.heartbeat);
      else this._linkClosed(link, 1006, true); // dead: reconnect with backoff and resume
    });
  }

  // Token refresh

  _scheduleRefresh() {
    this._clearTimer(this._refreshTimer);
    this._refreshTimer = null;
    if (typeof this._token !== "function") return;
    const expiry = tokenExpiry(this._currentToken);
    if (expiry === null) return;
    const lifetime = expiry - Date.now();
    const wait = Math.max(0, lifetime - Math.min(this.refreshMargin, lifetime / 2));
    this._refreshTimer = this._later(wait, () => this._refresh());
  }

  async _refresh() {
    const link = this._link;
    let token;
    try {
      token = await this._token();
    } catch {
      this._refreshTimer = this._later(Math.min(this.refreshMargin, 5000), () => this._refresh());
      return;
    }
    if (link !== this._link || !link) return;
    this._currentToken = token;
    if (link.kind === "sse") {
      this._linkClosed(link, 4001, true); // an event stream cannot take a new token: reconnect with it
      return;
    }
    const ref = `t${++this._refs}`;
    this._pending.set(ref, {
      resolve: () => this._scheduleRefresh(),
      reject: () => this._linkClosed(link, 4001, true),
    });
    link.send({ type: "refresh", ref, token });
  }

  // SSE has no way up: a send goes through POST /send-message with the same token

  async _sendOverHttp(message) {
    const headers = { "content-type": "application/json" };
    if (this._currentToken) headers.authorization = `Bearer ${this._currentToken}`;
    const body = JSON.stringify({ ...message, sender_id: this.id });
    const origin = new URL(sseUrl(this.url));
    const target = new URL(origin.pathname.replace(/\/events$/, "/send-message"), origin);
    let reply;
    try {
      const response = await this.fetch(target.toString(), { method: "POST", headers, body });
      reply = await response.json();
      if (!response.ok && reply.error !== "not_delivered") {
        throw new RelayError(reply.detail || reply.error, { type: "error", ref: null, ...reply });
      }
    } catch (error) {
      throw error instanceof RelayError ? error : new RelayError(String(error));
    }
    const { error, detail, ...report } = reply;
    return { type: "ack", ref: null, ...report };
  }

  // Network events

  _offline() {
    if (this._stopped) return;
    this._drop("offline");
    this._setState("connecting");
  }

  _online() {
    if (this._stopped) return;
    this._attempt = 0;
    if (!this._link) {
      this._connect();
    } else if (this._link.kind === "websocket") {
      this._probe(); // the network changed under it: is it still there?
    } else {
      const link = this._link; // an event stream cannot be probed: open a new one, resuming
      link.close();
      this._link = null;
      this._connect();
    }
  }

  // Plumbing

  _drop(reason) {
    this._clearTimers();
    const link = this._link;
    this._link = null;
    this._welcomed = false;
    if (link) link.close(1000, reason);
    this._rejectPending("connection closed");
  }

  _rejectPending(reason) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const { reject } of pending) reject(new RelayError(reason));
  }

  _end(code, reason) {
    if (this._state === "closed") return;
    this._closeCode = code;
    this._closeReason = reason;
    this._setState("closed");
    this._emit("closed", { code, reason });
  }

  _error(error, transport) {
    this._emit("error", { error: error instanceof Error ? error : new RelayError(String(error)), transport });
  }

  _setState(state) {
    if (state === this._state) return;
    this._state = state;
    this._emit("state", state);
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _later(ms, fn) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, ms);
    this._timers.add(timer);
    return timer;
  }

  _clearTimer(timer) {
    if (timer === null || timer === undefined) return;
    clearTimeout(timer);
    this._timers.delete(timer);
  }

  _clearTimers() {
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    this._refreshTimer = null;
    this._connectTimer = null;
    this._heartbeatTimer = null;
  }
}

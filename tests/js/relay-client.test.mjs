// Unit tests for relayd/web/static/relay-client.js (the real file), with Node's
// built-in runner: `node --test tests/js/`. No npm dependencies: the
// WebSocket and EventSource are small fakes, the timers are Node's mock timers.

import { test, describe, beforeEach, afterEach, mock } from "node:test";
import assert from "node:assert/strict";
import { readFile, access } from "node:fs/promises";

import {
  BACKOFF_BASE_MS,
  BACKOFF_CAP_MS,
  RelayClient,
  RelayError,
  ResumePoint,
  backoffDelay,
  reconnectDelay,
  sseUrl,
  tokenExpiry,
} from "../../relayd/web/static/relay-client.js";

// A WebSocket the test drives by hand.
class FakeWebSocket {
  static made = [];
  constructor(url) {
    this.url = new URL(url);
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.made.push(this);
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code) { this.closedWith = code ?? 1005; }
  // what the server does
  open() { this.onopen && this.onopen(); }
  frame(object) { this.onmessage && this.onmessage({ data: JSON.stringify(object) }); }
  end(code, reason = "") { this.onclose && this.onclose({ code, reason }); }
  refuse() { this.end(1006); } // never opened
}

class FakeEventSource {
  static made = [];
  constructor(url) {
    this.url = new URL(url);
    this.listeners = {};
    this.closed = false;
    FakeEventSource.made.push(this);
  }
  addEventListener(type, listener) { (this.listeners[type] ||= []).push(listener); }
  close() { this.closed = true; }
  emit(type, object) { for (const l of this.listeners[type] || []) l({ data: JSON.stringify(object) }); }
}

const welcome = (epoch, lastId, extra = {}) =>
  ({ type: "welcome", client_id: "alice", epoch, last_id: lastId, replayed: 0, lost: false, ...extra });
const message = (id, content = `m${id}`) =>
  ({ type: "message", id, sender_id: null, receiver_id: "alice", content, timestamp: "2026-11-26T00:00:00.000Z" });
const flush = () => new Promise((resolve) => setImmediate(resolve));

function makeClient(options = {}) {
  const client = new RelayClient("ws://relay.test:8080/ws", {
    id: "alice", WebSocket: FakeWebSocket, EventSource: FakeEventSource, random: () => 1, ...options,
  });
  const seen = { messages: [], states: [], welcomes: [] };
  client.addEventListener("message", (e) => seen.messages.push(e.detail));
  client.addEventListener("state", (e) => seen.states.push(e.detail));
  client.addEventListener("welcome", (e) => seen.welcomes.push(e.detail));
  return { client, seen };
}

describe("backoff", () => {
  test("full jitter: a random fraction of min(30 s, 0.5 s * 2^attempt)", () => {
    const ceilings = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000];
    ceilings.forEach((ceiling, attempt) => {
      assert.equal(backoffDelay(attempt, { random: () => 1 }), ceiling);
      assert.equal(backoffDelay(attempt, { random: () => 0.5 }), ceiling / 2);
      assert.equal(backoffDelay(attempt, { random: () => 0 }), 0);
    });
    assert.equal(BACKOFF_BASE_MS, 500);
    assert.equal(BACKOFF_CAP_MS, 30000);
    assert.equal(backoffDelay(1000, { random: () => 1 }), 30000);
  });

  test("with Math.random every delay stays in [0, ceiling)", () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(30000, 500 * 2 ** attempt);
      for (let i = 0; i < 200; i++) {
        const delay = backoffDelay(attempt);
        assert.ok(delay >= 0 && delay < ceiling, `${delay} outside [0, ${ceiling})`);
      }
    }
  });

  test("close codes: 1000, 1009, 4000 end it; 4001, 4009, 4010 at once; 1001 within 5 s; others back off", () => {
    for (const code of [1000, 1009, 4000]) assert.equal(reconnectDelay(code, 0), null);
    for (const code of [4001, 4009, 4010]) assert.equal(reconnectDelay(code, 5), 0);
    assert.equal(reconnectDelay(1001, 9, { random: () => 1 }), 5000);
    assert.equal(reconnectDelay(1001, 9, { random: () => 0.2 }), 1000);
    for (const code of [1006, 1011, 4008]) assert.equal(reconnectDelay(code, 3, { random: () => 1 }), 4000);
  });
});

describe("resume point (never twice)", () => {
  test("a message at or below lastId is a duplicate", () => {
    const point = new ResumePoint();
    point.welcome(welcome("e1", 0));
    assert.deepEqual([1, 2, 2, 1, 3].map((id) => point.accept(message(id))), [true, true, false, false, true]);
    assert.equal(point.lastId, 3);
  });

  test("a broadcast (id null) is always new and does not move lastId", () => {
    const point = new ResumePoint(4, "e1");
    assert.equal(point.accept({ ...message(null), receiver_id: null }), true);
    assert.equal(point.lastId, 4);
  });

  test("a welcome with a new epoch starts counting again", () => {
    const point = new ResumePoint(41, "e1");
    assert.equal(point.welcome(welcome("e2", 2, { lost: true })), true);
    assert.equal(point.epoch, "e2");
    assert.equal(point.accept(message(1)), true, "id 1 of the new epoch is new");
    assert.equal(point.accept(message(2)), true);
    assert.equal(point.accept(message(2)), false);
  });

  test("same epoch: lastId is kept; a sequence behind it restarts the count", () => {
    const point = new ResumePoint(5, "e1");
    assert.equal(point.welcome(welcome("e1", 9)), false);
    assert.equal(point.lastId, 5);
    assert.equal(point.accept(message(5)), false);
    assert.equal(point.welcome(welcome("e1", 2, { lost: true })), true);
    assert.equal(point.lastId, 0);
  });

  test("a lastId given without an epoch adopts the first welcome's epoch", () => {
    const point = new ResumePoint(7);
    assert.deepEqual(point.params(), { last_id: "7" });
    assert.equal(point.welcome(welcome("e1", 9)), false);
    assert.deepEqual(point.params(), { last_id: "7", epoch: "e1" });
  });
});

describe("helpers", () => {
  test("sseUrl maps ws→http, wss→https and the last /ws → /events", () => {
    assert.equal(sseUrl("ws://h:8080/ws"), "http://h:8080/events");
    assert.equal(sseUrl("wss://h/relay/ws?x=1"), "https://h/relay/events?x=1");
    assert.equal(sseUrl("wss://h/ws/app/ws"), "https://h/ws/app/events");
    assert.equal(sseUrl("ws://h/wsx"), "http://h/wsx");
  });

  test("tokenExpiry reads exp from a JWT, null otherwise", () => {
    const payload = Buffer.from(JSON.stringify({ sub: "alice", exp: 1700000000 })).toString("base64url");
    assert.equal(tokenExpiry(`eyJhbGciOiJIUzI1NiJ9.${payload}.sig`), 1700000000 * 1000);
    assert.equal(tokenExpiry("not a token"), null);
    assert.equal(tokenExpiry(undefined), null);
  });
});

describe("RelayClient", () => {
  beforeEach(() => {
    FakeWebSocket.made = [];
    FakeEventSource.made = [];
    mock.timers.enable({ apis: ["setTimeout", "Date"] });
  });
  afterEach(() => mock.timers.reset());

  test("reconnects with backoff, resumes with last_id and epoch, hands nothing over twice", async () => {
    const { client, seen } = makeClient();
    await flush();
    const first = FakeWebSocket.made[0];
    assert.equal(first.url.searchParams.get("id"), "alice");
    assert.equal(first.url.searchParams.has("last_id"), false, "a fresh client does not ask to replay history");
    first.open();
    first.frame(welcome("e1", 0));
    first.frame(message(1));
    first.frame(message(2));
    assert.equal(client.state, "open");
    first.end(1006);
    assert.equal(client.state, "connecting");
    mock.timers.tick(499);
    await flush();
    assert.equal(FakeWebSocket.made.length, 1, "waits the backoff delay (random() = 1: 500 ms)");
    mock.timers.tick(1);
    await flush();
    const second = FakeWebSocket.made[1];
    assert.equal(second.url.searchParams.get("last_id"), "2");
    assert.equal(second.url.searchParams.get("epoch"), "e1");
    second.open();
    second.frame(welcome("e1", 3));
    second.frame(message(2)); // a duplicate the application must not see
    second.frame(message(3));
    assert.deepEqual(seen.messages.map((m) => m.id), [1, 2, 3]);
    assert.equal(client.lastId, 3);

    second.end(1006);
    mock.timers.tick(500);
    await flush();
    const third = FakeWebSocket.made[2];
    third.open();
    third.frame(welcome("e2", 1, { lost: true })); // the relay restarted
    third.frame(message(1, "new epoch"));
    assert.deepEqual(seen.messages.map((m) => m.content), ["m1", "m2", "m3", "new epoch"]);
    assert.equal(client.epoch, "e2");
    assert.equal(client.lastId, 1);
    client.close();
    assert.equal(third.closedWith, 1000);
    assert.equal(seen.states.at(-1), "closed");
  });

  test("backoff grows while the relay is down and resets after a welcome", async () => {
    makeClient();
    await flush();
    const delays = [];
    for (let attempt = 0; attempt < 8; attempt++) {
      const made = FakeWebSocket.made.length;
      FakeWebSocket.made.at(-1).refuse();
      FakeEventSource.made.at(-1).onerror();
      let waited = 0;
      while (FakeWebSocket.made.length === made) {
        mock.timers.tick(100);
        waited += 100;
        await flush();
      }
      delays.push(waited);
    }
    assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    const socket = FakeWebSocket.made.at(-1);
    socket.open();
    socket.frame(welcome("e1", 0));
    socket.end(1006);
    mock.timers.tick(500);
    await flush();
    assert.equal(FakeWebSocket.made.at(-1) !== socket, true, "back to 0.5 s after a welcome");
  });

  test("4000 (replaced) and 1000 end the client: no reconnect", async () => {
    for (const code of [4000, 1000]) {
      FakeWebSocket.made = [];
      const { client, seen } = makeClient();
      await flush();
      const socket = FakeWebSocket.made[0];
      socket.open();
      socket.frame(welcome("e1", 0));
      socket.end(code);
      mock.timers.tick(120000);
      await flush();
      assert.equal(FakeWebSocket.made.length, 1, `no reconnect after ${code}`);
      assert.equal(client.state, "closed");
      assert.deepEqual(seen.states, ["connecting", "open", "closed"]);
    }
  });

  test("falls back to SSE when the WebSocket cannot be opened", async () => {
    const { client, seen } = makeClient();
    await flush();
    FakeWebSocket.made[0].refuse();
    const source = FakeEventSource.made[0];
    assert.equal(source.url.toString(), "http://relay.test:8080/events?id=alice");
    source.onopen();
    source.emit("welcome", welcome("e1", 0));
    source.emit("message", message(1));
    source.emit("message", message(1));
    assert.equal(client.transport, "sse");
    assert.deepEqual(seen.messages.map((m) => m.id), [1]);
    source.emit("close", { type: "close", code: 4000, reason: "replaced" });
    mock.timers.tick(60000);
    await flush();
    assert.equal(client.state, "closed");
    assert.equal(FakeWebSocket.made.length, 1);
  });

  test("send resolves with the ack, rejects on an error frame and on close", async () => {
    const { client } = makeClient();
    await assert.rejects(client.send({ receiver_id: "bob", content: 1 }), RelayError, "not connected yet");
    await flush();
    const socket = FakeWebSocket.made[0];
    socket.open();
    socket.frame(welcome("e1", 0));
    const acked = client.send({ receiver_id: "bob", content: "hi" });
    const refused = client.send({ receiver_id: "bob" });
    const cut = client.send({ receiver_id: "bob", content: "late" });
    const [one, two] = socket.sent;
    assert.deepEqual(one, { receiver_id: "bob", content: "hi", type: "send", ref: one.ref });
    assert.notEqual(one.ref, two.ref);
    socket.frame({ type: "ack", ref: one.ref, message_id: "x", sent: ["bob"], queued: [], dropped: [] });
    socket.frame({ type: "error", ref: two.ref, error: "invalid_frame", detail: "no content" });
    assert.deepEqual((await acked).sent, ["bob"]);
    await assert.rejects(refused, (error) => error instanceof RelayError && error.code === "invalid_frame");
    socket.end(1006);
    await assert.rejects(cut, (error) => error instanceof RelayError && error.code === "closed");
    client.close();
  });

  test("a token function is called for each connection and again before exp (refresh frame)", async () => {
    const exp = Math.floor(Date.now() / 1000) + 120;
    const payload = Buffer.from(JSON.stringify({ sub: "alice", exp })).toString("base64url");
    let calls = 0;
    const token = async () => `h.${payload}.${++calls}`;
    const { client } = makeClient({ token, refreshMargin: 30000, heartbeat: 0 });
    await flush();
    const socket = FakeWebSocket.made[0];
    assert.equal(socket.url.searchParams.get("token"), `h.${payload}.1`);
    socket.open();
    socket.frame(welcome("e1", 0));
    mock.timers.tick(120000 - 30000 - 2000);
    await flush();
    assert.equal(socket.sent.length, 0, "not yet");
    mock.timers.tick(2500);
    await flush();
    const refresh = socket.sent.at(-1);
    assert.equal(refresh.type, "refresh");
    assert.equal(refresh.token, `h.${payload}.2`);
    socket.frame({ type: "ack", ref: refresh.ref });
    socket.end(4001);
    mock.timers.tick(0);
    await flush();
    assert.equal(FakeWebSocket.made[1].url.searchParams.get("token"), `h.${payload}.3`, "4001: at once, new token");
    client.close();
  });

  test("a silent WebSocket is probed; no answer within probeTimeout means dead: reconnect and resume", async () => {
    const { client, seen } = makeClient({ heartbeat: 45000, probeTimeout: 10000 });
    await flush();
    const socket = FakeWebSocket.made[0];
    socket.open();
    socket.frame(welcome("e1", 0));
    mock.timers.tick(30000);
    socket.frame(message(1)); // traffic postpones the probe
    mock.timers.tick(44999);
    assert.equal(socket.sent.length, 0);
    mock.timers.tick(1);
    const probe = socket.sent.at(-1);
    assert.equal(probe.type, "refresh");
    socket.frame({ type: "ack", ref: probe.ref }); // alive
    mock.timers.tick(10000);
    assert.equal(socket.closedWith, null);
    assert.equal(FakeWebSocket.made.length, 1);
    mock.timers.tick(45000);
    assert.equal(socket.sent.length, 2, "probed again after another silent period");
    mock.timers.tick(10000); // no answer: dead
    assert.equal(socket.closedWith, 1000);
    assert.equal(client.state, "connecting");
    mock.timers.tick(500);
    await flush();
    const next = FakeWebSocket.made[1];
    assert.equal(next.url.searchParams.get("last_id"), "1");
    assert.equal(next.url.searchParams.get("epoch"), "e1");
    assert.deepEqual(seen.messages.map((m) => m.id), [1]);
    client.close();
  });

  test("a second connect while the token function is pending does not open two connections", async () => {
    let release;
    const token = () => new Promise((resolve) => { release = resolve; });
    const { client } = makeClient({ token, heartbeat: 0 });
    await flush();
    const first = release;
    client._online(); // the browser came back online meanwhile
    await flush();
    release("t2");
    first("t1");
    await flush();
    assert.equal(FakeWebSocket.made.length, 1);
    assert.equal(FakeWebSocket.made[0].url.searchParams.get("token"), "t2");
    client.close();
  });
});

describe("errors and endings are reported", () => {
  let savedWebSocket;
  beforeEach(() => {
    FakeWebSocket.made = [];
    FakeEventSource.made = [];
    savedWebSocket = Object.getOwnPropertyDescriptor(globalThis, "WebSocket");
    mock.timers.enable({ apis: ["setTimeout", "Date"] });
  });
  afterEach(() => {
    mock.timers.reset();
    if (savedWebSocket) Object.defineProperty(globalThis, "WebSocket", savedWebSocket);
    else delete globalThis.WebSocket;
  });

  function watch(client) {
    const seen = { errors: [], closed: [], states: [] };
    client.addEventListener("error", (e) => seen.errors.push(e.detail));
    client.addEventListener("closed", (e) => seen.closed.push(e.detail));
    client.addEventListener("state", (e) => seen.states.push(e.detail));
    return seen;
  }

  test("no WebSocket and no EventSource: an error event and closed, no silent retry loop", async () => {
    globalThis.WebSocket = undefined;
    const client = new RelayClient("ws://relay.test:8080/ws", { id: "alice", EventSource: null, random: () => 1 });
    const seen = watch(client);
    await flush();
    assert.deepEqual(seen.errors.map((e) => e.transport), ["websocket", "sse"]);
    assert.match(seen.errors[0].error.message, /no WebSocket/);
    assert.equal(client.state, "closed");
    assert.equal(seen.closed.length, 1);
    assert.equal(seen.closed[0].code, 1006);
    assert.match(seen.closed[0].reason, /no transport/);
    assert.equal(client.closeCode, 1006);
    mock.timers.tick(120000);
    await flush();
    assert.equal(seen.errors.length, 2, "nothing is tried again");
    assert.deepEqual(seen.states, ["connecting", "closed"]);
  });

  test("no WebSocket: an error event, then the SSE fallback", async () => {
    globalThis.WebSocket = undefined;
    const client = new RelayClient("ws://relay.test:8080/ws", { id: "alice", EventSource: FakeEventSource });
    const seen = watch(client);
    await flush();
    assert.deepEqual(seen.errors.map((e) => e.transport), ["websocket"]);
    const source = FakeEventSource.made[0];
    source.onopen();
    source.emit("welcome", welcome("e1", 0));
    assert.equal(client.state, "open");
    assert.equal(client.transport, "sse");
    source.onerror(); // a transient failure: SSE is tried again, the WebSocket is not
    mock.timers.tick(500);
    await flush();
    assert.equal(FakeEventSource.made.length, 2);
    assert.equal(seen.errors.length, 1);
  });

  test("a WebSocket constructor that throws is reported and not tried again", async () => {
    class Broken { constructor() { throw new SyntaxError("bad url"); } }
    const client = new RelayClient("ws://relay.test:8080/ws", { id: "alice", WebSocket: Broken, EventSource: FakeEventSource });
    const seen = watch(client);
    await flush();
    assert.equal(seen.errors[0].error.name, "SyntaxError");
    FakeEventSource.made[0].onerror();
    mock.timers.tick(60000);
    await flush();
    assert.equal(seen.errors.length, 1);
    assert.ok(FakeEventSource.made.length >= 2);
  });

  test("closed carries the close code and reason of the WebSocket that ended it", async () => {
    const client = new RelayClient("ws://relay.test:8080/ws", { id: "alice", WebSocket: FakeWebSocket });
    const seen = watch(client);
    await flush();
    const socket = FakeWebSocket.made[0];
    socket.open();
    socket.frame(welcome("e1", 0));
    socket.end(1001, "server shutting down"); // reconnects: not closed
    assert.deepEqual(seen.closed, []);
    mock.timers.tick(5000);
    await flush();
    const second = FakeWebSocket.made[1];
    second.open();
    second.frame(welcome("e1", 0));
    second.end(4000, "replaced by a newer connection");
    assert.deepEqual(seen.closed, [{ code: 4000, reason: "replaced by a newer connection" }]);
    assert.equal(client.closeCode, 4000);
    assert.equal(client.closeReason, "replaced by a newer connection");
    client.close();
    assert.equal(seen.closed.length, 1, "close() after the end changes nothing");
  });

  test("closed carries the code and reason of an SSE close event; close() gives 1000", async () => {
    const viaSse = new RelayClient("ws://relay.test:8080/ws", { id: "alice", transports: ["sse"], EventSource: FakeEventSource });
    const seen = watch(viaSse);
    await flush();
    const source = FakeEventSource.made[0];
    source.onopen();
    source.emit("welcome", welcome("e1", 0));
    source.emit("close", { type: "close", code: 4000, reason: "replaced" });
    assert.deepEqual(seen.closed, [{ code: 4000, reason: "replaced" }]);

    const closedByUs = new RelayClient("ws://relay.test:8080/ws", { id: "bob", WebSocket: FakeWebSocket });
    const ours = watch(closedByUs);
    await flush();
    closedByUs.close();
    assert.deepEqual(ours.closed, [{ code: 1000, reason: "client closed" }]);
  });

  test("a token function that fails is reported, then retried with backoff", async () => {
    let calls = 0;
    const client = new RelayClient("ws://relay.test:8080/ws", {
      id: "alice", WebSocket: FakeWebSocket, random: () => 1,
      token: async () => { calls += 1; throw new Error("auth server down"); },
    });
    const seen = watch(client);
    await flush();
    assert.equal(seen.errors.length, 1);
    assert.equal(seen.errors[0].transport, null);
    assert.equal(seen.errors[0].error.message, "auth server down");
    mock.timers.tick(500);
    await flush();
    assert.equal(calls, 2);
    assert.equal(client.state, "connecting");
    client.close();
  });
});

describe("the package", () => {
  const dir = new URL("../../relayd/web/static/", import.meta.url);

  test("relay-client.js has no side effect; global.js sets globalThis.RelayClient", async () => {
    delete globalThis.RelayClient;
    const module = await import(new URL("relay-client.js", dir));
    assert.equal(globalThis.RelayClient, undefined);
    const global = await import(new URL("global.js", dir));
    assert.equal(globalThis.RelayClient, module.RelayClient);
    assert.deepEqual(Object.keys(global).sort(), Object.keys(module).sort());
    delete globalThis.RelayClient;
  });

  test("package.json: an ES module package whose exports exist, global.js its only side effect", async () => {
    const pkg = JSON.parse(await readFile(new URL("package.json", dir), "utf8"));
    assert.equal(pkg.type, "module");
    assert.deepEqual(pkg.sideEffects, ["./global.js"]);
    for (const entry of Object.values(pkg.exports)) {
      for (const file of typeof entry === "string" ? [entry] : Object.values(entry)) await access(new URL(file, dir));
    }
    const init = await readFile(new URL("../../__init__.py", dir), "utf8");
    assert.equal(pkg.version, init.match(/__version__ = "([^"]+)"/)[1], "one version with relayd");
  });

  test("the declarations name every export of the module", async () => {
    const module = await import(new URL("relay-client.js", dir));
    const declarations = await readFile(new URL("relay-client.d.ts", dir), "utf8");
    const declared = [...declarations.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]);
    assert.deepEqual(declared.sort(), Object.keys(module).sort());
  });
});

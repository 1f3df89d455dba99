// Types of relay-client.js, the browser client for relayd (docs/protocol.md).

/** First delay ceiling of the reconnect backoff, in ms. */
export declare const BACKOFF_BASE_MS: number;
/** Largest delay ceiling of the reconnect backoff, in ms. */
export declare const BACKOFF_CAP_MS: number;
/** After 1001 (server restarting) a reconnect waits a random delay below this, in ms. */
export declare const SHUTDOWN_SPREAD_MS: number;

export interface BackoffOptions {
  base?: number;
  cap?: number;
  random?: () => number;
}

/** Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)) ms. */
export declare function backoffDelay(attempt: number, options?: BackoffOptions): number;
/** The delay before reconnecting after `code`, in ms; null when the client must not reconnect. */
export declare function reconnectDelay(code: number, attempt: number, options?: BackoffOptions): number | null;
/** The SSE URL of a WebSocket URL: ws→http, wss→https, the path's last /ws → /events. */
export declare function sseUrl(wsUrl: string): string;
/** The `exp` of a JWT in ms since the epoch, or null when it has none. */
export declare function tokenExpiry(token: string | null | undefined): number | null;

export type Transport = "websocket" | "sse";
export type ConnectionState = "connecting" | "open" | "closed";

/** The server's first frame on every connection. */
export interface WelcomeFrame {
  type: "welcome";
  client_id: string;
  epoch: string;
  last_id: number;
  replayed: number;
  lost: boolean;
}

/** A message: numbered per receiver (`id`), or a broadcast (`id` and `receiver_id` null). */
export interface MessageFrame<Content = unknown> {
  type: "message";
  id: number | null;
  sender_id: string | null;
  receiver_id: string | null;
  content: Content;
  timestamp: string;
}

/** The reply to a send. */
export interface AckFrame {
  type: "ack";
  ref: string | null;
  message_id?: string;
  sent?: string[];
  queued?: string[];
  dropped?: string[];
}

/** A refused frame. */
export interface ErrorFrame {
  type: "error";
  ref: string | null;
  error: string;
  detail?: string;
}

export type SendTarget =
  | { receiver_id: string; receiver_ids?: never; broadcast?: never }
  | { receiver_ids: string[]; receiver_id?: never; broadcast?: never }
  | { broadcast: true; receiver_id?: never; receiver_ids?: never };

/** What `send` takes: exactly one target, and the content (any JSON value). */
export type OutgoingMessage<Content = unknown> = SendTarget & { content: Content };

/** Detail of `closed`: the client has stopped for good. */
export interface ClosedDetail {
  /** 1000 after close(), 4000 when replaced by a newer connection, 1009, or 1006 when no transport can be used. */
  code: number;
  reason: string;
}

/** Detail of `error`: something failed (the client says so instead of retrying silently). */
export interface ErrorDetail {
  error: Error;
  /** The transport that failed, or null (the token function failed). */
  transport: Transport | null;
}

/** The events a RelayClient dispatches, by name. */
export interface RelayClientEventMap {
  welcome: CustomEvent<WelcomeFrame>;
  message: CustomEvent<MessageFrame>;
  state: CustomEvent<ConnectionState>;
  closed: CustomEvent<ClosedDetail>;
  error: CustomEvent<ErrorDetail>;
}

export interface RelayClientOptions {
  /** The client id (optional in token mode: the token's `sub`). */
  id?: string;
  /** A token, or a function returning one (called for each connection and again before `exp`). */
  token?: string | (() => string | Promise<string>);
  /** Resume point: the highest message id seen, in `epoch`. */
  lastId?: number;
  epoch?: string;
  /** Order of preference; SSE is the fallback. */
  transports?: Transport[];
  /** ms a connection may take to bring its welcome (default 10000). */
  connectTimeout?: number;
  /** ms before `exp` to refresh the token (default 30000). */
  refreshMargin?: number;
  /** ms of silence before a WebSocket is probed (default 45000; 0: never). */
  heartbeat?: number;
  /** ms a probe may take before the connection is declared dead (default 10000). */
  probeTimeout?: number;
  /** Replacements for the globals (tests, non-browser environments). */
  WebSocket?: unknown;
  EventSource?: unknown;
  fetch?: typeof fetch;
  random?: () => number;
}

/** Remembers where a client is in its id's sequence; never accepts a message twice. */
export declare class ResumePoint {
  constructor(lastId?: number, epoch?: string);
  lastId: number;
  epoch: string | undefined;
  /** True when `frame` is new (and moves lastId); false for a duplicate. */
  accept(frame: MessageFrame): boolean;
  /** Take a welcome; true when the sequence started again (the count restarts from 0). */
  welcome(frame: WelcomeFrame): boolean;
  params(): { last_id: string; epoch?: string };
}

/** A send that the relay refused (an `error` frame), or that could not be made. */
export declare class RelayError extends Error {
  constructor(detail: string, frame?: ErrorFrame | null);
  readonly frame: ErrorFrame | null;
  /** The frame's `error` code, or "closed". */
  readonly code: string;
}

type Listener<K extends keyof RelayClientEventMap> = (this: RelayClient, event: RelayClientEventMap[K]) => void;

export declare class RelayClient extends EventTarget {
  constructor(url: string, options?: RelayClientOptions);
  readonly url: string;
  readonly id: string | undefined;
  readonly transports: Transport[];
  readonly state: ConnectionState;
  /** The highest message id handed to the application in `epoch`. */
  readonly lastId: number;
  /** The epoch of the latest welcome. */
  readonly epoch: string | undefined;
  /** The transport in use while connected, else null. */
  readonly transport: Transport | null;
  /** Once closed for good: its close code, else null. */
  readonly closeCode: number | null;
  /** Once closed for good: its reason, else null. */
  readonly closeReason: string | null;
  /** Resolves with the ack; rejects with a RelayError on an error frame or on close. */
  send<Content>(message: OutgoingMessage<Content>): Promise<AckFrame>;
  /** Close with 1000 and stop reconnecting. */
  close(): void;
  addEventListener<K extends keyof RelayClientEventMap>(
    type: K, listener: Listener<K>, options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof RelayClientEventMap>(
    type: K, listener: Listener<K>, options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions,
  ): void;
}

// Type declarations of rtserver-client (hand-written; `npm run typecheck`
// checks them together with the examples).

export type ClientState = "connecting" | "connected" | "disconnected" | "closed";
export type ClosePolicy = "backoff" | "token" | "never";

export interface Logger {
  debug?(message: string, fields: object): void;
  info?(message: string, fields: object): void;
  warn?(message: string, fields: object): void;
  error?(message: string, fields: object): void;
  log?(message: string, fields: object): void;
}

/** The subset of the WebSocket API the client uses (the browser's, or the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ReconnectOptions {
  /** ms; the first delay is random(0, minDelay). Default 500. */
  minDelay?: number;
  /** ms; the cap of min(maxDelay, minDelay * 2^attempt). Default 20000. */
  maxDelay?: number;
  /** ms connected after which the attempt counter resets. Default 10000. */
  stableAfter?: number;
  /** Attempts before the client gives up (state "closed"). Default Infinity. */
  maxAttempts?: number;
}

export interface RtClientOptions {
  /** ws://host:port/ws */
  url: string;
  /** Called on the first connect, before the token's exp (minus tokenRefreshMargin) and after a 4001. */
  getToken: () => Promise<string> | string;
  /** Default: globalThis.WebSocket (pass `ws`'s WebSocket in Node 20). */
  WebSocket?: WebSocketConstructor | typeof globalThis.WebSocket;
  reconnect?: ReconnectOptions;
  /** Default: console. */
  logger?: Logger;
  /** Random source in [0, 1) for the backoff jitter (seededRandom() in tests). */
  random?: () => number;
  /** ms; the server's heartbeat.interval (a welcome frame's heartbeat_interval wins). Default 15000. */
  heartbeatInterval?: number;
  /** ms of silence beyond heartbeatInterval after which the connection is dead. Default 5000. */
  heartbeatGrace?: number;
  /** ms between client pings when nothing else is sent (below heartbeat.idle_timeout). Default 20000. */
  pingInterval?: number;
  /** ms to wait for the reply of a request, subscribe or publish. Default 10000. */
  requestTimeout?: number;
  /** ms before the token's exp when the next token is fetched. Default 30000. */
  tokenRefreshMargin?: number;
  offlineQueue?: { maxCount?: number; maxAge?: number };
  /** Send a publish `key` and retry a publish whose ack was lost with it (rtserver applies a key once). Default true. */
  idempotentPublish?: boolean;
  /** Recent notification ids remembered to drop a repeat. Default 1000. */
  notificationDedupe?: number;
}

export declare const DEFAULTS: Readonly<{
  reconnect: Readonly<Required<ReconnectOptions>>;
  heartbeatInterval: number;
  heartbeatGrace: number;
  pingInterval: number;
  requestTimeout: number;
  tokenRefreshMargin: number;
  offlineQueue: Readonly<{ maxCount: number; maxAge: number }>;
  idempotentPublish: boolean;
  notificationDedupe: number;
}>;

export declare class RtError extends Error {
  constructor(init: { code: string; message: string; action: string; closeCode?: number | null;
                      details?: Record<string, unknown> | null; cause?: unknown });
  /** The server's error code or a client code (docs/client.md). */
  readonly code: string;
  /** "Required action: ..." */
  readonly action: string;
  /** The close code when the error ended the connection. */
  readonly closeCode: number | null;
  /** Extra fields of the server's error frame (e.g. conflict: current_value, current_version). */
  readonly details: Record<string, unknown> | null;
  static fromFrame(frame: Record<string, unknown>): RtError;
}

export interface StateEvent { state: ClientState; code: number | null; reason: string }
export interface ReconnectEvent { attempt: number; delay: number; code: number; reason: string }
export interface RecoverInfo {
  recovered: boolean;
  replayed: number;
  /** Why not: epoch_changed, history_trimmed, invalid_position, recovery_unsupported, gap, no_position. */
  reason: string | null;
  action: string | null;
  /** Messages known to be missed, when the server's position tells. */
  missed: number | null;
}
export interface RecoverEvent extends RecoverInfo { room: string }

export interface MessageMeta {
  room: string;
  seq: number;
  from: string | null;
  /** The frame type: "message", or a domain frame such as "field_update". */
  type: string;
  frame: Record<string, unknown>;
}

export interface SubscribeHandlers<T = unknown> {
  onMessage?: (data: T, meta: MessageMeta) => void;
  onRecover?: (info: RecoverInfo) => void;
  onError?: (error: RtError) => void;
}

export declare class Subscription {
  readonly room: string;
  readonly kind: "room" | "quote";
  readonly state: "pending" | "subscribed" | "resubscribing" | "closed";
  readonly epoch: string | null;
  readonly seq: number | null;
  readonly duplicatesDropped: number;
  readonly ready: Promise<Subscription>;
  unsubscribe(): Promise<void>;
}

export interface PublishAck { room: string; seq: number }

export interface ConnectionInfo {
  attempt: number;
  lastCloseCode: number | null;
  lastCloseReason: string;
  connectionId: string | null;
  worker: number | null;
  user: string | null;
  permissions: string[];
  reconnects: number;
  duplicatesDropped: number;
}

export interface ClientEvents {
  state: StateEvent;
  reconnect: ReconnectEvent;
  error: RtError;
  recover: RecoverEvent;
  frame: Record<string, any>;
}

export interface Quote {
  id: string;
  customer_id: string;
  state: string;
  status: string;
  total_premium: number | null;
  fields: Record<string, unknown>;
  version: number;
  [key: string]: unknown;
}

export interface QuoteHandlers {
  onState?: (quote: Quote, info: { version: number; editableFields: Record<string, string>; reload: boolean }) => void;
  onUpdate?: (frame: Record<string, any>) => void;
  onFocus?: (frame: { quote_id: string; field: string; user: string | null; connection_id: string; seq: number }) => void;
  onBlur?: (frame: { quote_id: string; field: string; user: string | null; connection_id: string; seq: number }) => void;
  onProgress?: (frame: { quote_id: string; progress: number; stage: string; seq: number }) => void;
  onRecover?: (info: RecoverInfo) => void;
  onError?: (error: RtError) => void;
}

export declare class QuoteSubscription {
  readonly quoteId: string;
  readonly room: string;
  readonly quote: Quote | null;
  readonly version: number;
  readonly editableFields: Record<string, string>;
  /** Resolves with the quote on the first quote_state. */
  readonly ready: Promise<Quote>;
  /** Rejects with RtError code "conflict" (details.current_value, details.current_version) on a lost race. */
  edit(field: string, value: unknown, options?: { baseVersion?: number }): Promise<{ room: string; seq?: number; quote_id: string; field: string; version: number }>;
  focus(field: string): void;
  blur(field: string): void;
  unsubscribe(): Promise<void>;
}

export declare class Stream {
  readonly started: Record<string, any> | null;
  readonly stopped: boolean;
  readonly ready: Promise<Record<string, any>>;
  stop(): Promise<Record<string, any> | null>;
}

export interface NotificationFrame {
  id: number;
  title: string;
  body: string;
  data: unknown;
  created_at: string;
}

export declare class Notifications {
  onNotification(listener: (n: NotificationFrame) => void): () => void;
  list(options?: { unreadOnly?: boolean; limit?: number; beforeId?: number }): Promise<{
    items: Array<{ notification_id: number; title: string; body: string; data: unknown; created_at: string;
                   delivered_at: string | null; read_at: string | null }>;
    next_before_id: number | null }>;
  ack(notificationId: number): Promise<{ notification_id: number; read_at: string }>;
}

export declare class RtClient {
  constructor(options: RtClientOptions);
  readonly url: string;
  readonly state: ClientState;
  readonly info: ConnectionInfo;
  on<K extends keyof ClientEvents>(event: K, listener: (payload: ClientEvents[K]) => void): () => void;
  listenerCount(event?: keyof ClientEvents): number;
  connect(): Promise<void>;
  subscribe<T = unknown>(room: string, handlers?: SubscribeHandlers<T>): Subscription;
  getSubscription(room: string): Subscription | undefined;
  subscriptions(): Subscription[];
  publish(room: string, data: unknown): Promise<PublishAck>;
  request(frame: Record<string, unknown> & { type: string }, replyType: string): Promise<Record<string, any>>;
  send(frame: Record<string, unknown> & { type: string }): void;
  close(): void;
  readonly quotes: { subscribe(quoteId: string, handlers?: QuoteHandlers): QuoteSubscription };
  readonly analytics: {
    start(dashboard: "quotes" | "conversion" | "performance", filters: Record<string, unknown>, handlers?: {
      onUpdate?: (frame: Record<string, any>) => void; onEvent?: (frame: Record<string, any>) => void;
      onError?: (error: RtError) => void }): Stream;
  };
  readonly admin: {
    startMonitoring(options: { interval: number; onMetrics?: (f: Record<string, any>) => void;
      onAlert?: (f: Record<string, any>) => void; onAlertResolved?: (f: Record<string, any>) => void;
      onError?: (error: RtError) => void }): Stream;
    startCluster(options?: { onStatus?: (f: Record<string, any>) => void;
      onError?: (error: RtError) => void }): Stream;
    alertsList(): Promise<Record<string, any>>;
    resolveAlert(alertId: string | number): Promise<Record<string, any>>;
  };
  readonly notifications: Notifications;
}

export declare class Backoff {
  constructor(options: { minDelay: number; maxDelay: number; random?: () => number });
  minDelay: number;
  maxDelay: number;
  attempt: number;
  ceiling(): number;
  next(): number;
  reset(): void;
}

export declare function seededRandom(seed: number): () => number;
export declare const CLOSE_POLICY: Readonly<Record<number, ClosePolicy>>;
export declare function closePolicy(code: number): { policy: ClosePolicy; listed: boolean };
export declare function tokenExpiry(token: string): number | null;

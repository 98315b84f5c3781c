// Type declarations of chat-client.js, the client of the chat server's native
// WebSocket protocol. The wire objects are described in docs/protocol.md;
// the library in docs/web-client.md.

export type ErrorCode =
  | 'invalid'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'not_member'
  | 'too_large'
  | 'rate_limited'
  | 'conflict'
  | 'unknown_command'
  | 'unavailable'
  | 'internal'
  // Made by the client, not the server:
  | 'disconnected'
  | 'timeout'
  | 'closed'
  /** An upload cancelled through its AbortSignal. */
  | 'aborted';

export class ChatError extends Error {
  readonly code: ErrorCode | string;
  constructor(code: ErrorCode | string, message?: string);
}

export interface User {
  id: string;
  name: string;
  avatar_url?: string;
  /** Absent for a deleted user. */
  roles?: string[];
  /**
   * `true` for a user an operator deleted: `{"id","name":"Deleted user","deleted":true}`.
   * `room:join` lists them after the members, to name the messages they left.
   */
  deleted?: true;
}

export type RoomKind = 'direct' | 'group' | 'support';
export type Visibility = 'public' | 'private';

export interface Room {
  id: string;
  kind: RoomKind;
  name?: string;
  visibility: Visibility;
  created_by: string;
  created_at: string;
  last_seq: number;
  /** Support rooms: the agent who took the conversation. */
  claimed_by?: string;
  /** Support rooms: closed to new messages (sends fail with `forbidden`). */
  closed?: boolean;
  /** What the room is about (`updateRoom`). */
  topic?: string;
}

export interface RoomSummary extends Room {
  unread: number;
  read_seq: number;
  /** The user muted the room (no push for it). */
  muted?: boolean;
  /** When the mute ends; absent for a mute until `unmute`. */
  muted_until?: string;
}

export type MemberRole = 'owner' | 'admin' | 'member';

export interface BanEntry {
  user: User;
  banned_by: string;
  banned_at: string;
}

/** An uploaded file. `url` and `thumbnail_url` are signed (valid for an
 * hour or more, then fetched again with the message) and absolute: the
 * client resolves them against the chat server. */
export interface Attachment {
  id: string;
  name: string;
  /** Taken from the bytes by the server, not from the uploader. */
  content_type: string;
  /** In bytes. */
  size: number;
  url: string;
  /** Images: their size in pixels. */
  width?: number;
  height?: number;
  /** Images: a preview, its longest side 320 px. */
  thumbnail_url?: string;
}

/** Progress of an upload: bytes of the request body sent, of `total`. */
export interface UploadProgress {
  loaded: number;
  total: number;
}

export interface UploadOptions {
  /** Called as the body goes out, and with `loaded === total` at the end. */
  onProgress?: (progress: UploadProgress) => void;
  /** Cancels the upload; the promise then rejects with `aborted`. */
  signal?: AbortSignal;
  /** The file name to give the server (default: the File's name, else `file`). */
  name?: string;
}

export interface Message {
  id: string;
  room_id: string;
  seq: number;
  sender_id: string;
  client_msg_id: string;
  body: string;
  attachments: Attachment[];
  reply_to?: string;
  created_at: string;
  edited_at?: string;
  deleted: boolean;
  /** For the line a call leaves in its room's history (sent by the caller,
   * with an empty body): how the call went. */
  call?: CallSummary;
}

export type CallMedia = 'audio' | 'video';
export type CallOutcome = 'missed' | 'rejected' | 'busy' | 'ended';
export type CallEndReason = 'hangup' | 'rejected' | 'timeout' | 'busy' | 'disconnected' | 'answered_elsewhere';

export interface CallSummary {
  call_id: string;
  media: CallMedia;
  outcome: CallOutcome;
  /** Whole seconds the two talked, for an answered call. */
  duration_s?: number;
}

/** An RTCIceServer, as the server hands it out (TURN entries with
 * per-user, expiring `username` and `credential`). */
export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

/** A Web Push subscription as `PushSubscription.toJSON()` gives it, the body of
 * `POST /v1/push/subscriptions`. */
export interface PushSubscriptionData {
  endpoint: string;
  keys: { p256dh: string; auth: string };
}

/** What the service worker `/push-sw.js` gets as a push's decrypted payload. */
export type PushPayload =
  | {
      type: 'message';
      room_id: string;
      room_name?: string;
      message_id: string;
      seq: number;
      sender: User;
      /** The message's first 120 characters. */
      preview: string;
      /** How many messages a folded push stands for, when more than one. */
      count?: number;
    }
  | { type: 'call'; call_id: string; room_id: string; from: User; media: CallMedia };

export interface CallPlaced {
  call_id: string;
  ice_servers: IceServer[];
  /** The callee was calling you at the same moment: this invite answered
   * their (older) call, and you are its callee. */
  glare?: true;
}

export interface CallRejoined {
  call_id: string;
  room_id: string;
  media: CallMedia;
  state: 'ringing' | 'accepted';
  peer: string;
  /** Whether you placed the call. */
  caller: boolean;
  ice_servers: IceServer[];
}

export type Status = 'online' | 'away' | 'busy' | 'invisible';
export type PresenceStatus = 'online' | 'away' | 'busy' | 'offline';

export interface Ready {
  session_id: string;
  user: User;
  rooms: RoomSummary[];
  server_time: string;
  /** True when this `ready` follows a reconnect. */
  resumed: boolean;
}

export interface MemberReceipts {
  user_id: string;
  delivered_seq: number;
  read_seq: number;
}

export interface Joined {
  room: Room;
  members: User[];
  last_seq: number;
  read_seq: number;
  receipts?: MemberReceipts[];
  /** Every member's role, by user id. */
  roles?: Record<string, MemberRole>;
}

/** One page of `searchMessages`; `next` is the `before` of the page after. */
export interface SearchPage {
  results: { message: Message; room: Room }[];
  next?: string;
}

export interface HistoryPage {
  messages: Message[];
  has_more: boolean;
}

export interface OutboxEntry {
  room_id: string;
  client_msg_id: string;
  body: string;
  reply_to?: string;
  created_at: string;
  /** The files of the message, as given to `send` (ids given alone as `{id}`). */
  attachments?: Array<Partial<Attachment> & { id: string }>;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Event names and the data their callbacks get. */
export interface ChatEvents {
  /** Each new message once: live, replayed after a reconnect, or your own
   * acknowledged send (`mine`). Raw `message:new` frames are not emitted. */
  message: { message: Message; mine: boolean };
  'message:updated': { message: Message };
  'message:deleted': { room_id: string; message_id: string };
  'message:status': { room_id: string; user_id: string; status: 'delivered' | 'read'; up_to_seq: number };
  'typing:user': { room_id: string; user_id: string; typing: boolean };
  /** Who is typing in a room now, after any change. */
  typing: { room_id: string; users: string[] };
  'user:joined': { room_id: string; user: User };
  'user:left': { room_id: string; user_id: string };
  'presence:changed': { user_id: string; status: PresenceStatus; last_seen?: string };
  'room:added': { room: Room };
  /** A room's name or topic changed, or a support room was claimed or closed. */
  'room:updated': { room: Room };
  /** A member's role changed. */
  'room:member_updated': { room_id: string; user_id: string; role: MemberRole };
  /** The user muted or unmuted a room in another tab or on another device. */
  'room:muted': { room_id: string; muted: boolean; muted_until?: string };
  /** The user is no longer a member (they left, in any tab or on any
   * device); the room is no longer followed or in `rooms`. */
  'room:removed': { room_id: string };
  /** A call rings for you (every session of yours). */
  'call:incoming': { call_id: string; room_id: string; from: User; media: CallMedia };
  /** The callee's session `session_id` answered (to every session of both). */
  'call:accepted': { call_id: string; user_id: string; session_id: string };
  'call:rejected': { call_id: string; user_id: string };
  /** The call is over; `answered_elsewhere` ends it for this session only. */
  'call:ended': { call_id: string; reason: CallEndReason; duration_s?: number };
  /** SDP or ICE from the other session of the call. */
  'call:signal': { call_id: string; from: string; payload: unknown };
  /** The other participant came back on a new session (`rejoinCall`). */
  'call:rejoined': { call_id: string; user_id: string; session_id: string };
  /** Receipts of a room changed wholesale (after a join). */
  receipts: { room_id: string };
  /** A `room:join` reply, also after the automatic re-joins of a reconnect. */
  joined: Joined;
  ready: Ready;
  state: { state: ConnectionState };
  disconnected: { code: number; reason: string };
  reconnecting: { attempt: number; delay_ms: number };
  /** The token was refused and `getToken` could not replace it; the client stopped. */
  'auth-failed': { code: number; reason: string };
  /** An `error` frame (a failed command without `ref`), or a client-side problem. */
  error: { code: string; message: string };
  outbox: { entries: OutboxEntry[] };
  /** The server refused a send for good; it left the outbox. */
  'send-failed': { entry: OutboxEntry; error: ChatError };
  [other: string]: unknown;
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface ChatClientOptions {
  /** The server's http(s) or ws(s) origin; defaults to the page's origin. */
  server?: string;
  /** A token (JWT). Give this or `getToken`. */
  token?: string;
  /** Called before every connection; `reason` is `rejected` after the server
   * refused the last token (close 4401), so a fresh one can be made. */
  getToken?: (info: { reason: 'connect' | 'rejected' }) => string | Promise<string>;
  /** Reconnect backoff: the first delay is up to this, doubling each try (500). */
  minBackoffMs?: number;
  /** The longest delay between tries (8000). */
  maxBackoffMs?: number;
  /** How long a command waits for its reply (15000). */
  requestTimeoutMs?: number;
  /** How often an idle connection is checked with `ping`; 0 turns it off (25000). */
  heartbeatMs?: number;
  /** Acknowledge received messages with `message:delivered` (true). */
  autoDelivered?: boolean;
  /** Keep the outbox in this storage (e.g. localStorage) under `storageKey`,
   * so unsent messages survive a reload. */
  storage?: StorageLike;
  storageKey?: string;
  /** A WebSocket constructor, for runtimes without a global one. */
  WebSocket?: typeof WebSocket;
  /** An XMLHttpRequest constructor for `upload`, for runtimes without a global one. */
  XMLHttpRequest?: typeof XMLHttpRequest;
}

export class ChatClient {
  constructor(options: ChatClientOptions);
  readonly server: string;
  readonly state: ConnectionState;
  /** The signed-in user, after the first `ready`. */
  readonly user: User | null;
  readonly sessionId: string | null;
  /** The user's rooms with unread counts, kept up to date. */
  readonly rooms: Map<string, RoomSummary>;
  /** Messages sent but not yet stored, oldest first. */
  readonly outbox: OutboxEntry[];

  on<K extends keyof ChatEvents>(type: K, fn: (data: ChatEvents[K]) => void): () => void;
  off<K extends keyof ChatEvents>(type: K, fn: (data: ChatEvents[K]) => void): void;

  connect(): Promise<Ready>;
  close(): void;
  whenOpen(timeoutMs?: number): Promise<void>;
  request<T = Record<string, unknown>>(
    type: string,
    data?: Record<string, unknown>,
    options?: { timeoutMs?: number },
  ): Promise<T>;

  join(roomId: string, options?: { sinceSeq?: number }): Promise<Joined>;
  leave(roomId: string): Promise<void>;
  unfollow(roomId: string): void;
  createRoom(spec: { kind: RoomKind; name?: string; visibility?: Visibility; members?: string[] }): Promise<Room>;
  directRoom(userId: string): Promise<Room>;
  invite(roomId: string, userId: string): Promise<Record<string, never>>;
  history(roomId: string, options?: { beforeSeq?: number; afterSeq?: number; limit?: number }): Promise<HistoryPage>;

  /** A member's role in a joined room. */
  roleOf(roomId: string, userId: string): MemberRole | undefined;
  /** Whether the user owns or administers a joined group room. */
  canModerate(roomId: string): boolean;
  updateRoom(roomId: string, changes: { name?: string; topic?: string }): Promise<Room>;
  removeMember(roomId: string, userId: string, options?: { ban?: boolean }): Promise<Record<string, never>>;
  unban(roomId: string, userId: string): Promise<Record<string, never>>;
  bans(roomId: string): Promise<BanEntry[]>;
  setRole(roomId: string, userId: string, role: 'admin' | 'member'): Promise<void>;
  mute(roomId: string, options?: { until?: Date | string }): Promise<void>;
  unmute(roomId: string): Promise<void>;

  /** `attachments`: uploaded files (or their ids); `body` may then be empty. */
  send(
    roomId: string,
    body: string,
    options?: { replyTo?: string; clientMsgId?: string; attachments?: Array<Attachment | string> },
  ): Promise<Message>;
  /** `POST /v1/attachments` with progress; resolves with the Attachment. */
  upload(file: Blob, options?: UploadOptions): Promise<Attachment>;
  edit(roomId: string, messageId: string, body: string): Promise<Message>;
  delete(roomId: string, messageId: string): Promise<Record<string, never>>;
  markRead(roomId: string, seq: number): Promise<void>;
  receipts(roomId: string): Map<string, { delivered_seq: number; read_seq: number }>;
  statusOf(roomId: string, seq: number): 'sent' | 'delivered' | 'read';

  typing(roomId: string): void;
  stopTyping(roomId: string): void;
  typingUsers(roomId: string): string[];

  setStatus(status: Status): Promise<Record<string, never>>;
  presenceOf(userId: string): PresenceStatus | Status | undefined;
  onlineUsers(): Promise<Array<{ user: User; status: PresenceStatus }>>;
  searchUsers(q: string, options?: { limit?: number }): Promise<User[]>;
  /** Messages holding every word of `q` in the user's rooms (or `roomId`), newest first. */
  searchMessages(q: string, options?: { roomId?: string; limit?: number; before?: string }): Promise<SearchPage>;
  /** `to` is required in a room of more than two members. */
  inviteCall(roomId: string, media: CallMedia, options?: { to?: string }): Promise<CallPlaced>;
  acceptCall(callId: string): Promise<Record<string, never>>;
  rejectCall(callId: string): Promise<Record<string, never>>;
  endCall(callId: string): Promise<Record<string, never>>;
  signalCall(callId: string, to: string, payload: unknown): Promise<Record<string, never>>;
  rejoinCall(callId: string): Promise<CallRejoined>;
  /** `GET /v1/calls/ice-servers`. */
  iceServers(): Promise<IceServer[]>;
  /**
   * `POST /v1/push/subscriptions`: a Web Push subscription for the signed-in
   * user (idempotent per endpoint); `not_found` when the server offers no push.
   */
  subscribePush(subscription: PushSubscription | PushSubscriptionData): Promise<void>;
  /** `DELETE /v1/push/subscriptions`: no more pushes to this endpoint. */
  unsubscribePush(endpoint: string): Promise<void>;
}

export interface CallConnectionOptions {
  callId: string;
  /** The other participant's user id. */
  peer: string;
  iceServers?: IceServer[];
  /** Your camera and microphone; its tracks are sent. */
  stream?: MediaStream;
  onTrack?: (stream: MediaStream) => void;
  /** `RTCPeerConnection.connectionState` as it changes (`error: …` on a signalling failure). */
  onState?: (state: string) => void;
  RTCPeerConnection?: typeof RTCPeerConnection;
}

/** One side of a call's RTCPeerConnection, signalled through `call:signal`. */
export class CallConnection {
  constructor(client: ChatClient, options: CallConnectionOptions);
  readonly callId: string;
  readonly peer: string;
  readonly pc: RTCPeerConnection;
  /** The other side's media, once they arrive. */
  readonly remote: MediaStream | null;
  /** Makes and sends the offer: the caller's part once the call is accepted. */
  offer(options?: { iceRestart?: boolean }): Promise<void>;
  close(): void;
}

export function serverBase(server?: string): string;
/** `GET /v1/push/vapid-public-key` (base64url); `null` when the server offers no push. */
export function vapidKey(server?: string): Promise<string | null>;

export function createVisitorSession(
  server?: string,
  options?: { name?: string },
): Promise<{ token: string; user: User; expires_at: string }>;
export function supportAvailability(server?: string): Promise<{ available: boolean; online_agents: number }>;
export function devLoginEnabled(server?: string): Promise<boolean>;
export function devLogin(
  server: string | undefined,
  name: string,
  options?: { roles?: string[] },
): Promise<{ token: string; user: User; expires_at: string }>;

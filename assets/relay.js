// The relay client of the call page: who this page is in the room (a peer id kept per tab and
// room, and the token from the stream's `welcome` that proves it), the event stream, posts
// made one after another (so the relay publishes them in the order they were made: an offer
// always precedes its candidates), addressed posts (`?to=PEER`: only that peer's streams get
// them), and the goodbye sent when the page goes away.
//
// Identity: every stream starts with `event: welcome` carrying this page's peer id and a token
// the server signed for it and this room; every POST sends both back (X-Sigrelay-Peer,
// X-Sigrelay-Token), so the relay stamps our events `from` us and, under --strict-peers,
// refuses posts from anyone who only guessed the room name. The token is kept in
// sessionStorage and sent as `token=` on every reconnect and after a reload, because the relay
// gives a held id only to the stream that proves it (anyone else who read our id gets 409).

import { openEventStream } from './sse.js';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function randomId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function stored(key) {
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

function store(key, value) {
  try {
    sessionStorage.setItem(key, value);
  } catch {
    // Storage disabled: reconnects still work from memory; a reload starts afresh.
  }
}

/**
 * The relay's own events (`welcome`, `presence`, `gap`) are trusted only in their own shape:
 * an object without `message`, the field every published event carries. The server refuses
 * publishes of these types; this keeps a page safe against a relay that does not.
 */
export function serverData(event) {
  try {
    const data = JSON.parse(event.data);
    if (data && typeof data === 'object' && !Array.isArray(data) && !('message' in data)) {
      return data;
    }
  } catch {
    // Not JSON: not the relay's.
  }
  return null;
}

/**
 * A published event as `{message, from}`: the body parsed as JSON (the seed's
 * `JSON.parse(JSON.parse(e.data).message)`) and the relay's `from` stamp (null when the post
 * was anonymous, as the seed's are). Null when it is not a JSON object.
 */
export function publishedData(event) {
  try {
    const outer = JSON.parse(event.data);
    const message = JSON.parse(outer.message);
    if (!message || typeof message !== 'object' || Array.isArray(message)) return null;
    return { message, from: typeof outer.from === 'string' ? outer.from : null };
  } catch {
    return null;
  }
}

/**
 * Joins `room` under a peer id of this tab (`slot` keeps the creator's and joiner's ids of one
 * tab apart). `replayFirst`: the first connect asks for the room's history (`last_event_id=0`),
 * so a newcomer can show what is still there (the chat); the page decides what to use of it.
 * handlers: onEvent(event), onOpen(), onDrop(), onRefused(error), as `openEventStream`.
 */
export function joinRoom(room, slot, handlers, { replayFirst = false } = {}) {
  const idKey = `sigrelay.peer.${room}.${slot}`;
  const tokenKey = `sigrelay.token.${room}.${slot}`;
  let peerId = stored(idKey);
  if (!peerId) {
    peerId = randomId();
    store(idKey, peerId);
  }
  let identity = null; // {peer, token} from the stream's `welcome`
  let welcomed;
  const welcome = new Promise((resolve) => {
    welcomed = resolve;
  });
  let outbox = Promise.resolve();
  let replay = replayFirst;

  const streamUrl = () => {
    let url = `/stream?channel=${encodeURIComponent(room)}&peer=${encodeURIComponent(peerId)}`;
    const token = identity?.token ?? stored(tokenKey);
    if (token) url += `&token=${encodeURIComponent(token)}`;
    // Only the first connect: a reconnect resumes from its Last-Event-ID.
    if (replay) url += '&lastEventId=0';
    replay = false;
    return url;
  };

  const headers = () =>
    identity ? { 'X-Sigrelay-Peer': identity.peer, 'X-Sigrelay-Token': identity.token } : {};

  const onEvent = (event) => {
    if (event.type === 'welcome') {
      const info = serverData(event);
      if (info && typeof info.peer === 'string' && typeof info.token === 'string') {
        identity = { peer: info.peer, token: info.token };
        if (info.peer === peerId) store(tokenKey, info.token);
        welcomed();
      }
      return;
    }
    handlers.onEvent(event);
  };

  async function post(type, body, to) {
    let url = `/channel/send/${encodeURIComponent(room)}/${type}`;
    if (to) url += `?to=${encodeURIComponent(to)}`;
    // The welcome is the stream's first event, so it is normally here long before any message;
    // without it (a relay that sends none) the post goes out anonymous after a short wait.
    await Promise.race([welcome, sleep(5000)]);
    for (let attempt = 1; ; attempt++) {
      let problem;
      try {
        const response = await fetch(url, { method: 'POST', body, headers: headers() });
        if (response.ok) return await response.json();
        problem = new Error(`HTTP ${response.status}: ${await response.text()}`);
        if (response.status < 500) throw problem;
      } catch (error) {
        problem = error;
        if (attempt >= 3) throw problem;
      }
      if (attempt >= 3) throw problem;
      await sleep(300 * attempt);
    }
  }

  const events = openEventStream(streamUrl, { ...handlers, onEvent });

  return {
    peerId,
    /** Posts `message` (JSON) as `type`, after everything posted before; to one peer with `to`. */
    send(type, message, to = null) {
      const body = JSON.stringify(message);
      const sent = outbox.then(() => post(type, body, to));
      outbox = sent.catch((error) => console.warn(`sigrelay: could not send ${type}:`, error));
      return sent;
    },
    /** Resolves when everything posted so far has gone out (or failed). */
    flushed: () => outbox,
    /**
     * Posts `message` as `type` from a page that is going away (pagehide): a keepalive fetch
     * outlives the page like a beacon does and, unlike sendBeacon, carries the identity
     * headers --strict-peers asks for.
     */
    sayGoodbye(type, message) {
      const body = JSON.stringify(message);
      const url = `/channel/send/${encodeURIComponent(room)}/${type}`;
      if (identity) {
        fetch(url, { method: 'POST', body, headers: headers(), keepalive: true }).catch(() => {});
      } else if (navigator.sendBeacon) {
        navigator.sendBeacon(url, body);
      }
    },
    close: () => events.close(),
  };
}

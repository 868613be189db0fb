// A small Server-Sent Events client on fetch(): WHATWG line parsing, the last event id kept
// and sent back as `Last-Event-ID` on reconnect. Unlike EventSource it can read an HTTP
// error answer (such as 409 "room is full") and stop instead of retrying forever.

/** An HTTP error answer from the stream endpoint; `message` is the server's `error` text. */
export class StreamRefused extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'StreamRefused';
    this.status = status;
  }
}

/**
 * Incremental parser for the `text/event-stream` format (WHATWG HTML, "Server-sent events").
 * Feed it decoded text with `push`; it calls `onEvent({type, data, lastEventId})` per event,
 * `onId(id)` whenever an event's id is committed and `onRetry(ms)` for `retry:` fields.
 */
export class EventStreamParser {
  constructor({ onEvent, onId = () => {}, onRetry = () => {} }) {
    this.onEvent = onEvent;
    this.onId = onId;
    this.onRetry = onRetry;
    this.buffer = '';
    this.skipLF = false; // the previous chunk ended with CR: a leading LF belongs to it
    this.type = '';
    this.data = [];
    this.idBuffer = null;
  }

  push(chunk) {
    let text = this.buffer + chunk;
    let pos = 0;
    if (this.skipLF && text.startsWith('\n')) pos = 1;
    this.skipLF = false;
    const eol = /[\r\n]/g;
    for (;;) {
      eol.lastIndex = pos;
      const found = eol.exec(text);
      if (!found) break;
      const i = found.index;
      let next = i + 1;
      if (text[i] === '\r') {
        if (i + 1 < text.length) {
          if (text[i + 1] === '\n') next = i + 2;
        } else {
          this.skipLF = true;
        }
      }
      this.line(text.slice(pos, i));
      pos = next;
    }
    this.buffer = text.slice(pos);
  }

  line(line) {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.startsWith(':')) return; // comment (keep-alive)
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
    }
    switch (field) {
      case 'event':
        this.type = value;
        break;
      case 'data':
        this.data.push(value);
        break;
      case 'id':
        if (!value.includes('\0')) this.idBuffer = value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.onRetry(Number(value));
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  dispatch() {
    if (this.idBuffer !== null) this.onId(this.idBuffer);
    const lastEventId = this.idBuffer;
    if (this.data.length === 0) {
      this.type = '';
      return;
    }
    const event = { type: this.type || 'message', data: this.data.join('\n'), lastEventId };
    this.type = '';
    this.data = [];
    this.onEvent(event);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Opens `url` as an event stream and keeps it open until `close()`. `url` may be a function,
 * called for every (re)connect, so a reconnect can carry what the page learned meanwhile (the
 * call page's `token=` from its last `welcome`).
 * handlers: onEvent(event), onOpen(), onDrop(error) after a lost connection (a reconnect
 * follows), onRefused(StreamRefused) for a 4xx answer (no reconnect).
 */
export function openEventStream(url, handlers) {
  let lastEventId = '';
  let retryMs = 1000;
  let closed = false;
  let controller = null;

  async function connectOnce() {
    controller = new AbortController();
    const headers = { Accept: 'text/event-stream' };
    if (lastEventId) headers['Last-Event-ID'] = lastEventId;
    const target = typeof url === 'function' ? url() : url;
    const response = await fetch(target, { headers, cache: 'no-store', signal: controller.signal });
    if (!response.ok) {
      let message = response.statusText || `HTTP ${response.status}`;
      try {
        const body = await response.json();
        if (body && typeof body.error === 'string') message = body.error;
      } catch {
        // Not JSON: keep the status text.
      }
      throw new StreamRefused(response.status, message);
    }
    if (!response.body) throw new Error('this browser cannot stream responses');
    const parser = new EventStreamParser({
      onEvent: (event) => {
        if (!closed) handlers.onEvent?.(event);
      },
      onId: (id) => {
        lastEventId = id;
      },
      onRetry: (ms) => {
        retryMs = Math.min(Math.max(ms, 250), 30000);
      },
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    handlers.onOpen?.();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(decoder.decode(value, { stream: true }));
    }
  }

  (async () => {
    let failures = 0;
    while (!closed) {
      let error = null;
      const started = Date.now();
      try {
        await connectOnce();
      } catch (e) {
        error = e;
      }
      if (closed) return;
      if (error instanceof StreamRefused && error.status >= 400 && error.status < 500) {
        closed = true;
        handlers.onRefused?.(error);
        return;
      }
      handlers.onDrop?.(error);
      // A stream that lived a while resets the back-off; quick failures back off to 15 s.
      failures = Date.now() - started > 10000 ? 0 : failures + 1;
      await sleep(Math.min(retryMs * 2 ** Math.max(failures - 1, 0), 15000));
    }
  })();

  return {
    close() {
      closed = true;
      controller?.abort();
    },
    get lastEventId() {
      return lastEventId;
    },
  };
}

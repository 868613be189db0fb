// Can this browser take part in a call at all? A browser without RTCPeerConnection (Debian 12's
// WebKitGTK, for one: it has getUserMedia but no WebRTC connections) would otherwise show
// "Connecting…" forever while the other person waits forever too. This module says what is
// missing, what to use instead, and tells the room before the page gives up.
//
// A camera or microphone that is missing or blocked (plain http on a LAN address, a browser
// without getUserMedia) is not a reason to give up: the call works receive-only, and call.js
// says so. Only the connection itself is required.

import { openEventStream } from './sse.js';

/** The message type a page that cannot call posts to its room before it gives up. */
export const UNSUPPORTED_TYPE = 'unsupported';

/** The names of what this browser lacks to make a WebRTC call; empty when it can. */
export function missingForCalls() {
  const missing = [];
  if (typeof window.RTCPeerConnection !== 'function') missing.push('RTCPeerConnection');
  if (typeof window.RTCSessionDescription !== 'function') missing.push('RTCSessionDescription');
  return missing;
}

/** What this page tells its own person. */
export function cannotCallText(missing) {
  return (
    `This browser cannot make video calls: it has no WebRTC connections ` +
    `(missing or turned off: ${missing.join(', ')}). Open this page in a current Firefox, ` +
    'Chrome, Edge or Safari, or on a phone in its usual browser (Safari on iPhone and iPad). ' +
    'The other person has been told.'
  );
}

/** What the other page shows when the `unsupported` message arrives. */
export function otherCannotText(message) {
  const what = Array.isArray(message?.missing)
    ? ` (it has no ${message.missing.filter((m) => typeof m === 'string').join(', ')})`
    : '';
  return (
    `The other person's browser cannot do video calls${what}. Ask them to open the invite ` +
    'link in a current Firefox, Chrome, Edge or Safari; this page keeps waiting for them.'
  );
}

/**
 * Tells the room this page cannot call: opens the room's stream just long enough for the
 * `welcome` (our identity, which --strict-peers requires on every POST), posts
 * `unsupported` and closes. Gives up quietly after `limitMs` or when the room refuses us
 * (a full room has nobody waiting for us). Resolves when done either way.
 */
export function announceCannotCall(room, streamUrl, missing, peer, limitMs = 10000) {
  return new Promise((resolve) => {
    let stream = null;
    const done = () => {
      clearTimeout(timer);
      stream?.close();
      resolve();
    };
    const timer = setTimeout(done, limitMs);
    const onEvent = async (event) => {
      if (event.type !== 'welcome') return;
      let identity = null;
      try {
        identity = JSON.parse(event.data);
      } catch {
        // No identity: the post goes out anonymous.
      }
      const headers = {};
      if (typeof identity?.peer === 'string' && typeof identity?.token === 'string') {
        headers['X-Sigrelay-Peer'] = identity.peer;
        headers['X-Sigrelay-Token'] = identity.token;
      }
      const url = `/channel/send/${encodeURIComponent(room)}/${UNSUPPORTED_TYPE}`;
      try {
        await fetch(url, { method: 'POST', headers, body: JSON.stringify({ peer, missing }) });
      } catch (error) {
        console.warn('sigrelay: could not tell the room this browser cannot call:', error);
      }
      done();
    };
    stream = openEventStream(streamUrl, {
      onOpen: () => {},
      onEvent,
      onDrop: () => {},
      onRefused: done,
    });
  });
}

// The call page, for both roles of the seed's flow: the creator (the seed's wait page,
// `/r/ROOM?as=creator`) answers offers; the joiner (the seed's join page, `/r/ROOM`) makes them.
//
// Wire format (byte-compatible with the seed): the joiner sends its offer as type `request`,
// the creator answers with `response`; ICE candidates go as `ice1` (creator) and `ice2`
// (joiner); bodies are `JSON.stringify({sdp: ...})` / `JSON.stringify({ice: ...})`, read back
// with `JSON.parse(JSON.parse(e.data).message)`. Extra fields ride along, and the seed ignores
// them: `sid` names one offer/answer session so stale candidates are dropped, `peer` is this
// page's id. Extra types the seed never listens to: `hello` (the creator's stream opened: a
// joiner whose call is stale calls again) and `bye` (hang-up or page closed).
//
// Identity: every stream starts with `event: welcome` carrying this page's peer id and a token
// the server signed for it and this room; every POST sends both back (X-Sigrelay-Peer,
// X-Sigrelay-Token), so the relay stamps our events `from` us and, under --strict-peers,
// refuses posts from anyone who only guessed the room name. The token is also this page's
// proof that it holds its peer id: it is kept in sessionStorage (per tab, room and role, like
// the id) and sent as `token=` on every reconnect and after a reload, because the relay gives
// a held id only to the stream that proves it (anyone else who read our id gets 409).
//
// The page shows which path the call's media took (`document.body.dataset.path`: `direct` or
// `relayed`, from the selected ICE candidate pair) and a QR code of its invite link. The test
// switch `?relay=1` makes the page use TURN relay candidates only (`iceTransportPolicy: relay`).

import { openEventStream } from './sse.js';
import { isValidRoom, joinUrl, copyText, ROOM_RULE } from './room.js';
import * as support from './support.js';

const $ = (selector) => document.querySelector(selector);
const ui = {
  local: $('#local'),
  remote: $('#remote'),
  status: $('#status'),
  notice: $('#notice'),
  roomName: $('#room-name'),
  role: $('#role'),
  link: $('#link'),
  copy: $('#copy'),
  copied: $('#copied'),
  mute: $('#mute'),
  camera: $('#camera'),
  hangup: $('#hangup'),
  rejoin: $('#rejoin'),
  retry: $('#retry'),
  play: $('#play'),
  placeholder: $('#placeholder'),
  path: $('#path'),
  qr: $('#qr'),
};

const params = new URLSearchParams(location.search);
const role = params.get('as') === 'creator' ? 'creator' : 'joiner';
// Test switch: media only through a TURN relay, to prove the built-in TURN carries a call.
const forceRelay = params.get('relay') === '1';
const room = roomFromPath();
const peerId = stablePeerId();
const tokenKey = `sigrelay.token.${room}.${role}`;
const myIceType = role === 'creator' ? 'ice1' : 'ice2';

// --- state -----------------------------------------------------------------------------------

let iceServers = [];
let localStream = null;
let mediaReady = null; // Promise of localStream (null when receive-only)
let events = null; // the open event stream
let pc = null; // the current RTCPeerConnection, or null between calls
let sid = null; // the offer/answer session `pc` belongs to (null: a seed peer's, unnamed)
let remoteStream = null; // built from tracks when the sender gave no stream id
let iceQueue = []; // candidates that came before their remote description: {sid, ice}
let present = 0; // streams subscribed to the room, from `presence`
let left = false; // the user hung up
let connections = 0; // times this page reached `connected` (a test hook)
let lastOfferId = null; // joiner: the event id our current offer was published under
let offerQueued = false;
let watchdog = null;
let watchdogDelay = 10000; // an unanswered offer is made again after this, doubling
let retryDelay = 1000; // a failed call is made again after this, doubling
let retryTimer = null; // the joiner's next attempt after a lost or failed connection
let pathTimer = null; // re-reads the call's path while connected (ICE may switch pairs)

// Every signaling step runs on one chain, in the order events arrived, so that a handler
// never sees a half-built RTCPeerConnection from the one before it.
let inbox = Promise.resolve();
function enqueue(step) {
  inbox = inbox.then(step).catch((error) => console.warn('sigrelay: signaling step failed:', error));
  return inbox;
}

// Outgoing messages are POSTed one after another, so the relay publishes them in the order
// they were made: an offer always precedes its candidates, even for a seed page that does
// not queue early candidates.
let outbox = Promise.resolve();
let identity = null; // {peer, token} from the stream's `welcome` event
let welcomed; // resolves when the first `welcome` arrives
const welcome = new Promise((resolve) => {
  welcomed = resolve;
});

/** The identity headers for a POST, once the stream has said who we are. */
function identityHeaders() {
  return identity ? { 'X-Sigrelay-Peer': identity.peer, 'X-Sigrelay-Token': identity.token } : {};
}

function send(type, message) {
  const body = JSON.stringify(message);
  const sent = outbox.then(() => post(type, body));
  outbox = sent.catch((error) => console.warn(`sigrelay: could not send ${type}:`, error));
  return sent;
}

async function post(type, body) {
  const url = `/channel/send/${encodeURIComponent(room)}/${type}`;
  // The welcome is the stream's first event, so it is normally here long before any message;
  // without it (a relay that sends none) the post goes out anonymous after a short wait.
  await Promise.race([welcome, sleep(5000)]);
  for (let attempt = 1; ; attempt++) {
    let problem;
    try {
      const response = await fetch(url, { method: 'POST', body, headers: identityHeaders() });
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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- what the page shows ---------------------------------------------------------------------

const STATUS_WORDS = {
  waiting: () =>
    role === 'creator' ? 'Waiting for someone to join' : 'Waiting for the other person',
  connecting: () => 'Connecting…',
  connected: () => 'Connected',
  disconnected: () => 'Connection interrupted, reconnecting…',
  failed: () => 'Connection failed',
};

// What the empty video area says; connected and disconnected show the picture instead.
const PLACEHOLDER = {
  waiting: () =>
    role === 'creator'
      ? 'Waiting for someone to join. Send them the invite link below.'
      : 'Waiting for the other person…',
  connecting: () => 'Connecting…',
};

function setState(state, words) {
  document.body.dataset.state = state;
  ui.status.textContent = words ?? STATUS_WORDS[state]();
  const placeholder = PLACEHOLDER[state];
  ui.placeholder.textContent = placeholder ? placeholder() : words ?? '';
}

const notices = new Map(); // key -> {text, kind}
function setNotice(key, text, kind = 'info') {
  if (text) notices.set(key, { text, kind });
  else notices.delete(key);
  ui.notice.replaceChildren(
    ...[...notices].map(([k, n]) => {
      const p = document.createElement('p');
      p.dataset.key = k;
      p.className = n.kind;
      p.textContent = n.text;
      return p;
    }),
  );
  ui.notice.hidden = notices.size === 0;
}

// --- set-up ----------------------------------------------------------------------------------

function roomFromPath() {
  const raw = location.pathname.replace(/^\/r\//, '').replace(/\/$/, '');
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

function randomId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// One id per tab, room and role, kept across reloads: the relay lets a reconnecting peer id
// that presents its token replace its own older stream, so a reload never finds the room
// "full" of itself.
function stablePeerId() {
  const key = `sigrelay.peer.${room}.${role}`;
  try {
    let id = sessionStorage.getItem(key);
    if (!id) {
      id = randomId();
      sessionStorage.setItem(key, id);
    }
    return id;
  } catch {
    return randomId(); // storage disabled: reloads then wait for the old place's grace
  }
}

/** The token from this tab's last `welcome` in this room, or null. */
function storedToken() {
  try {
    return sessionStorage.getItem(tokenKey);
  } catch {
    return null;
  }
}

/** The stream's URL, built for every (re)connect: with the latest token as proof of our id. */
function streamUrl() {
  let url = `/stream?channel=${encodeURIComponent(room)}&peer=${encodeURIComponent(peerId)}`;
  const token = identity?.token ?? storedToken();
  if (token) url += `&token=${encodeURIComponent(token)}`;
  return url;
}

function start() {
  document.body.dataset.role = role;
  document.body.dataset.connections = '0';
  ui.roomName.textContent = room;
  ui.role.textContent = role === 'creator' ? 'You created this room' : 'You joined this room';
  const link = joinUrl(room);
  ui.link.value = link;
  if (isValidRoom(room)) {
    ui.qr.src = `/qr.svg?text=${encodeURIComponent(link)}`;
    ui.qr.title = link;
    ui.qr.hidden = false;
  }
  ui.copy.addEventListener('click', async () => {
    const ok = await copyText(link, ui.link);
    ui.copied.textContent = ok ? 'Copied' : 'Select the link and copy it';
  });
  ui.mute.addEventListener('click', () => toggleTracks('audio', ui.mute, 'Mute', 'Unmute'));
  ui.camera.addEventListener('click', () =>
    toggleTracks('video', ui.camera, 'Camera off', 'Camera on'),
  );
  ui.hangup.addEventListener('click', hangUp);
  ui.retry.addEventListener('click', () => location.reload());
  ui.play.addEventListener('click', () => {
    ui.play.hidden = true;
    playRemote();
  });
  window.addEventListener('pagehide', sayByeOnUnload);

  if (!isValidRoom(room)) {
    setState('failed', 'Invalid room name');
    setNotice('room', `“${room}” is not a valid room name. ${ROOM_RULE}`, 'error');
    ui.hangup.disabled = true;
    return;
  }
  // --- browser support (assets/support.js): no WebRTC, no call; say so and tell the room ---
  const missing = support.missingForCalls();
  if (missing.length > 0) {
    setState('failed', 'This browser cannot do video calls');
    setNotice('support', support.cannotCallText(missing), 'error');
    ui.hangup.disabled = true;
    support.announceCannotCall(room, streamUrl, missing, peerId);
    return;
  }
  // --- end browser support ---
  setState('waiting', 'Connecting to the server…');
  // A prompt the person has not answered yet would otherwise look like a page that hangs.
  const asking = setTimeout(
    () => setNotice('media', 'Allow this page to use your camera and microphone (see the browser’s prompt).'),
    1000,
  );
  mediaReady = getMedia();
  mediaReady.then((stream) => {
    clearTimeout(asking);
    showLocalMedia(stream);
  });
  // The stream opens at once (a full room is reported before any camera prompt matters);
  // signaling steps wait for the camera on the inbox chain.
  enqueue(loadConfig);
  enqueue(() => mediaReady);
  events = openEventStream(streamUrl, { onOpen, onEvent, onDrop, onRefused });
}

async function loadConfig() {
  try {
    // The room rides along: TURN credentials are issued for it.
    const response = await fetch(`/config?room=${encodeURIComponent(room)}`, { cache: 'no-store' });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const config = await response.json();
    if (Array.isArray(config.iceServers)) iceServers = config.iceServers;
    // --- issue 17 test switch `?tcp=1`: TURN over TCP only (UDP to the server unused). ---
    if (params.get('tcp') === '1') iceServers = iceServers.filter((s) => String(s.urls).endsWith('?transport=tcp'));
  } catch (error) {
    console.warn('sigrelay: no /config, using no ICE servers (fine on one network):', error);
  }
  if (forceRelay && !iceServers.some(isTurnServer)) {
    setNotice(
      'relay',
      'Relay only (relay=1 in the address), but this server offers no TURN relay (start it ' +
        'with --turn): the call cannot connect.',
      'warn',
    );
  }
}

function isTurnServer(server) {
  const urls = Array.isArray(server?.urls) ? server.urls : [server?.urls];
  return urls.some((url) => typeof url === 'string' && /^turns?:/.test(url));
}

// --- which path the call took ----------------------------------------------------------------

const PATH_WORDS = {
  direct: 'Direct connection',
  relayed: 'Relayed through the server',
};

// The selected candidate pair of `p`'s transport: relayed when either end is a TURN relay
// candidate, direct otherwise. Null while there is no selected pair yet.
async function callPath(p) {
  const stats = await p.getStats();
  let pair = null;
  stats.forEach((report) => {
    if (report.type === 'transport' && report.selectedCandidatePairId) {
      pair ??= stats.get(report.selectedCandidatePairId) ?? null;
    }
  });
  if (!pair) {
    // Browsers without transport stats: the nominated pair in use (Firefox marks it selected).
    stats.forEach((report) => {
      if (
        report.type === 'candidate-pair' &&
        report.state === 'succeeded' &&
        (report.selected || report.nominated)
      ) {
        pair ??= report;
      }
    });
  }
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  if (!local || !remote) return null;
  return local.candidateType === 'relay' || remote.candidateType === 'relay' ? 'relayed' : 'direct';
}

function showPath(path) {
  if (path) {
    document.body.dataset.path = path;
    ui.path.textContent = PATH_WORDS[path];
    ui.path.hidden = false;
  } else {
    delete document.body.dataset.path;
    ui.path.textContent = '';
    ui.path.hidden = true;
  }
}

// Reads the path at once, again shortly after (the pair's stats can lag the state change), and
// then every few seconds while this call lasts.
function watchPath(p) {
  clearTimeout(pathTimer);
  let delay = 250;
  const check = async () => {
    if (pc !== p) return;
    let path = null;
    try {
      path = await callPath(p);
    } catch (error) {
      console.warn('sigrelay: getStats failed:', error);
    }
    if (pc !== p) return;
    if (path) showPath(path);
    delay = path ? 5000 : Math.min(delay * 2, 2000);
    pathTimer = setTimeout(check, delay);
  };
  check();
}

// --- camera and microphone -------------------------------------------------------------------

function mediaReason(error) {
  switch (error && error.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'permission was refused';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'none was found';
    case 'NotReadableError':
    case 'AbortError':
      return 'it is in use by another program or could not be started';
    default:
      return (error && error.message) || 'unknown error';
  }
}

async function getMedia() {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    const insecure = !window.isSecureContext;
    setNotice(
      'media',
      insecure
        ? 'Camera and microphone are blocked: this page was opened over plain http on a network ' +
            'address, and browsers only allow them over HTTPS or on localhost. You joined ' +
            'receive-only (you can see and hear the other person, they cannot see or hear you). ' +
            'To fix it, start sigrelay with --tls and open its https:// address, or open the ' +
            'page as http://localhost on the computer running sigrelay.'
        : 'This browser cannot use a camera or microphone here, so you joined receive-only ' +
            '(you can see and hear the other person, they cannot see or hear you).',
      'warn',
    );
    document.body.dataset.media = 'none';
    return null;
  }
  const tries = [
    [{ audio: true, video: true }, 'audio+video'],
    [{ video: true }, 'video'],
    [{ audio: true }, 'audio'],
  ];
  let firstError = null;
  for (const [constraints, kind] of tries) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia(constraints);
      document.body.dataset.media = kind;
      const why = mediaReason(firstError);
      if (kind === 'video') {
        setNotice('media', `No microphone (${why}): you joined with video only.`, 'warn');
      } else if (kind === 'audio') {
        setNotice('media', `No camera (${why}): you joined with audio only.`, 'warn');
      } else {
        setNotice('media', null);
      }
      return stream;
    } catch (error) {
      firstError ??= error;
    }
  }
  document.body.dataset.media = 'none';
  setNotice(
    'media',
    `Camera and microphone are not available (${mediaReason(firstError)}): you joined ` +
      'receive-only (you can see and hear the other person, they cannot see or hear you).',
    'warn',
  );
  return null;
}

function showLocalMedia(stream) {
  localStream = stream;
  if (left) {
    stopLocalMedia();
    return;
  }
  const hasVideo = !!stream && stream.getVideoTracks().length > 0;
  const hasAudio = !!stream && stream.getAudioTracks().length > 0;
  ui.mute.disabled = !hasAudio;
  ui.camera.disabled = !hasVideo;
  document.body.classList.toggle('no-local-video', !hasVideo);
  if (hasVideo) {
    ui.local.muted = true; // never play our own microphone back
    ui.local.srcObject = stream;
    ui.local.play().catch(() => {}); // autoplay takes over if play() is refused
  }
}

function stopLocalMedia() {
  localStream?.getTracks().forEach((track) => track.stop());
  ui.local.srcObject = null;
  document.body.classList.add('no-local-video');
  ui.mute.disabled = true;
  ui.camera.disabled = true;
}

function toggleTracks(kind, button, onLabel, offLabel) {
  const tracks = localStream ? localStream.getTracks().filter((t) => t.kind === kind) : [];
  if (tracks.length === 0) return;
  const enable = !tracks[0].enabled;
  tracks.forEach((track) => {
    track.enabled = enable;
  });
  button.setAttribute('aria-pressed', String(!enable));
  button.textContent = enable ? onLabel : offLabel;
  document.body.classList.toggle(kind === 'audio' ? 'muted' : 'camera-off', !enable);
}

// Adds our tracks to `p`; a joiner asks to receive what it cannot send, so a receive-only
// offer still carries audio and video sections.
function addLocalMedia(p, asOfferer) {
  const tracks = localStream ? localStream.getTracks() : [];
  for (const track of tracks) p.addTrack(track, localStream);
  if (asOfferer) {
    for (const kind of ['audio', 'video']) {
      if (!tracks.some((t) => t.kind === kind)) p.addTransceiver(kind, { direction: 'recvonly' });
    }
  }
}

// --- the peer connection ---------------------------------------------------------------------

function pcState(p) {
  if (p.connectionState) return p.connectionState;
  // Browsers without connectionState: derive it from the ICE state.
  return { checking: 'connecting', completed: 'connected' }[p.iceConnectionState] ?? p.iceConnectionState;
}

function callInProgress() {
  return !!pc && !['failed', 'closed'].includes(pcState(pc));
}

function newPc(forSid) {
  closePc();
  const p = new RTCPeerConnection({
    iceServers,
    iceTransportPolicy: forceRelay ? 'relay' : 'all',
  });
  pc = p;
  sid = forSid;
  p.onicecandidate = (event) => {
    if (pc !== p || !event.candidate || !event.candidate.candidate) return;
    send(myIceType, { ice: event.candidate, sid: forSid ?? undefined, peer: peerId });
  };
  p.ontrack = (event) => {
    if (pc !== p) return;
    let stream = event.streams[0];
    if (!stream) {
      remoteStream ??= new MediaStream();
      remoteStream.addTrack(event.track);
      stream = remoteStream;
    }
    if (ui.remote.srcObject !== stream) {
      ui.remote.srcObject = stream;
      playRemote();
    }
  };
  // Both events fire for one change in browsers that have both: act once per new state.
  let last = null;
  const changed = () => {
    const state = pcState(p);
    if (pc !== p || state === last) return;
    last = state;
    onPcState(state);
  };
  p.onconnectionstatechange = changed;
  p.oniceconnectionstatechange = changed;
  return p;
}

function closePc() {
  clearTimeout(watchdog);
  clearTimeout(retryTimer);
  clearTimeout(pathTimer);
  showPath(null);
  if (pc) {
    const old = pc;
    pc = null;
    old.onicecandidate = old.ontrack = old.onconnectionstatechange = null;
    old.oniceconnectionstatechange = null;
    old.close();
  }
  sid = null;
  lastOfferId = null;
  remoteStream = null;
  ui.remote.srcObject = null;
  ui.play.hidden = true;
}

function playRemote() {
  ui.remote.play().catch((error) => {
    // Autoplay with sound refused (no camera permission, no click yet): offer a button.
    if (error.name === 'NotAllowedError') ui.play.hidden = false;
  });
}

function onPcState(state) {
  if (left) return;
  clearTimeout(retryTimer);
  switch (state) {
    case 'new':
    case 'checking':
    case 'connecting':
      setState('connecting');
      break;
    case 'connected':
      if (document.body.dataset.state !== 'connected') {
        connections += 1;
        document.body.dataset.connections = String(connections);
      }
      watchdogDelay = 10000;
      retryDelay = 1000;
      setState('connected');
      setNotice('call', null);
      setNotice('support', null); // browser support: someone who can call is here now
      if (pc) watchPath(pc);
      break;
    case 'disconnected':
      setState('disconnected');
      // ICE may recover by itself; if it does not soon, the joiner starts a fresh call.
      if (role === 'joiner') {
        retryTimer = setTimeout(() => requestOffer(true), 8000);
      }
      break;
    case 'failed':
      if (role === 'joiner') {
        // Calling again at once would loop fast on a network that cannot connect at all.
        setState('failed', 'Connection failed, calling again…');
        retryTimer = setTimeout(() => requestOffer(true), retryDelay);
        retryDelay = Math.min(retryDelay * 2, 30000);
      } else {
        setState('failed', 'Connection failed, waiting for the other side to call again…');
      }
      break;
    default:
      break;
  }
}

// Remote candidates: a candidate of another session is stale and dropped; one without a
// session (a seed page's) belongs to the current call. Before the remote description they wait.
async function addRemoteIce(message) {
  if (!message.ice) return;
  const from = typeof message.sid === 'string' ? message.sid : null;
  if (from !== null && pc && from !== sid) return;
  if (pc && pc.remoteDescription && (from === null || from === sid)) {
    await addIce(pc, message.ice);
  } else {
    iceQueue.push({ sid: from, ice: message.ice });
    if (iceQueue.length > 200) iceQueue.shift();
  }
}

async function flushIce(p, forSid) {
  const queued = iceQueue;
  iceQueue = [];
  for (const item of queued) {
    if (item.sid === null || item.sid === forSid) await addIce(p, item.ice);
  }
}

async function addIce(p, ice) {
  try {
    await p.addIceCandidate(ice);
  } catch (error) {
    if (pc === p) console.warn('sigrelay: ignored an ICE candidate:', error);
  }
}

function peerLeft() {
  closePc();
  iceQueue = [];
  setState('waiting');
  setNotice('call', 'Peer left: the other person has left the call. Waiting for them to come back…');
}

// --- the joiner: makes offers ----------------------------------------------------------------

// Asks for a fresh offer; several reasons arriving together make one offer.
function requestOffer(force = false) {
  if (role !== 'joiner' || left || offerQueued) return;
  offerQueued = true;
  enqueue(async () => {
    offerQueued = false;
    if (left || present < 2) return;
    if (!force && callInProgress()) return;
    await makeOffer();
  });
}

async function makeOffer() {
  const mySid = randomId();
  const p = newPc(mySid);
  addLocalMedia(p, true);
  setState('connecting');
  await p.setLocalDescription(await p.createOffer());
  if (pc !== p) return;
  const { id } = await send('request', { sdp: p.localDescription, sid: mySid, peer: peerId });
  if (pc !== p) return;
  lastOfferId = Number(id);
  // An offer nobody answers (the other stream was a stale one) is made again, less often each time.
  clearTimeout(watchdog);
  watchdog = setTimeout(() => {
    if (pc === p && p.signalingState === 'have-local-offer') {
      watchdogDelay = Math.min(watchdogDelay * 2, 60000);
      requestOffer(true);
    }
  }, watchdogDelay);
}

async function onResponse(message) {
  if (!message.sdp || !pc || pc.signalingState !== 'have-local-offer') return;
  if (typeof message.sid === 'string' && message.sid !== sid) return; // answer to an old offer
  const p = pc;
  await p.setRemoteDescription(message.sdp);
  clearTimeout(watchdog);
  await flushIce(p, sid);
}

// The creator's stream (re)opened. Its `hello` carries the session it is answering; if that
// is not ours, our call is stale, unless our offer was published after the hello (event ids
// grow), which means the creator was already listening and will answer it.
async function onHello(message, eventId) {
  if (left) return;
  await outbox; // our offer in flight gets its id first
  if (typeof message.sid === 'string' && message.sid === sid && callInProgress()) return;
  if (
    lastOfferId !== null &&
    Number.isFinite(eventId) &&
    lastOfferId > eventId &&
    pc &&
    pc.signalingState === 'have-local-offer'
  ) {
    return;
  }
  if (present >= 2) await makeOffer();
}

// --- the creator: answers offers -------------------------------------------------------------

async function onRequest(message) {
  if (!message.sdp) return;
  const forSid = typeof message.sid === 'string' ? message.sid : null;
  const p = newPc(forSid); // every offer gets a fresh connection: the offerer started over
  setState('connecting');
  await p.setRemoteDescription(message.sdp);
  if (pc !== p) return;
  await flushIce(p, forSid);
  addLocalMedia(p, false);
  await p.setLocalDescription(await p.createAnswer());
  if (pc !== p) return;
  send('response', { sdp: p.localDescription, sid: forSid ?? undefined, peer: peerId });
}

function sayHello() {
  send('hello', { from: 'creator', sid: sid ?? undefined, peer: peerId });
}

// --- the event stream ------------------------------------------------------------------------

function onOpen() {
  setNotice('server', null);
  if (role === 'creator') enqueue(sayHello);
}

function onDrop() {
  if (!left) setNotice('server', 'Lost the connection to the server, reconnecting…', 'warn');
}

function onRefused(error) {
  left = true; // nothing more happens on this page until the person tries again
  stopLocalMedia();
  closePc();
  ui.hangup.disabled = true;
  ui.retry.hidden = false;
  if (error.status === 409 && error.message === 'room is full') {
    setState('failed', 'This room is full');
    setNotice(
      'call',
      'This room is full: two people are already in this call. Ask them for a new room, ' +
        'or try again later.',
      'error',
    );
  } else {
    setState('failed', 'Cannot join this room');
    setNotice('call', `The server refused this room: ${error.message}`, 'error');
  }
}

// The relay's own events (`welcome`, `presence`, `gap`) are trusted only in their own shape:
// an object without `message`, the field every published event carries. The server refuses
// publishes of these types; this keeps a page safe against a relay that does not.
function serverData(event) {
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

function onEvent(event) {
  const eventId = Number(event.lastEventId);
  if (event.type === 'welcome') {
    const info = serverData(event);
    if (info && typeof info.peer === 'string' && typeof info.token === 'string') {
      identity = { peer: info.peer, token: info.token };
      try {
        if (info.peer === peerId) sessionStorage.setItem(tokenKey, info.token);
      } catch {
        // Storage disabled: reconnects still use `identity`; a reload starts afresh.
      }
      welcomed();
    }
    return;
  }
  if (event.type === 'presence') {
    const info = serverData(event);
    if (info && typeof info.subscribers === 'number') {
      enqueue(() => onPresence(info.subscribers));
    }
    return;
  }
  if (event.type === 'gap') {
    // The relay no longer has some events we missed: negotiate again from scratch.
    const info = serverData(event);
    if (!info || typeof info.resumeFrom !== 'string') return;
    if (role === 'creator') enqueue(() => send('hello', { from: 'creator', peer: peerId }));
    else requestOffer(true);
    return;
  }
  let message;
  try {
    message = JSON.parse(JSON.parse(event.data).message);
  } catch {
    return; // not a signaling message
  }
  if (!message || typeof message !== 'object' || left) return;
  // --- browser support (assets/support.js): the other person's browser cannot call ---
  if (event.type === support.UNSUPPORTED_TYPE) {
    if (message.peer !== peerId) setNotice('support', support.otherCannotText(message), 'warn');
    return;
  }
  // --- end browser support ---
  // Our own messages come back to us too: each role listens only to the other's types.
  const handlers =
    role === 'creator'
      ? { request: onRequest, ice2: addRemoteIce, bye: onBye }
      : {
          response: onResponse,
          ice1: addRemoteIce,
          hello: onHello,
          bye: onBye,
          request: onOtherJoiner,
        };
  const handler = handlers[event.type];
  if (handler) enqueue(() => handler(message, eventId));
}

function onPresence(subscribers) {
  if (!Number.isFinite(subscribers)) return;
  present = subscribers;
  document.body.dataset.peers = String(subscribers);
  if (left) return;
  if (subscribers < 2) {
    if (pc) peerLeft();
    else if (document.body.dataset.state !== 'failed') setState('waiting');
  } else if (role === 'joiner') {
    requestOffer(false);
  } else if (!pc) {
    setState('waiting', 'Someone is here, waiting for their call…');
  }
}

function onBye(message) {
  if (message.peer === peerId) return;
  if (typeof message.sid === 'string' && message.sid === sid) peerLeft();
}

function onOtherJoiner(message) {
  if (message.peer && message.peer !== peerId) {
    setNotice(
      'call',
      'Someone else opened the join link too, but nobody created this room: one of you ' +
        'should open the room as its creator (the “Create room” button).',
      'warn',
    );
  }
}

// --- leaving ---------------------------------------------------------------------------------

function hangUp() {
  if (left) return;
  if (sid) send('bye', { sid, peer: peerId });
  left = true;
  closePc();
  events?.close();
  stopLocalMedia();
  setState('disconnected', 'You left the call');
  ui.placeholder.textContent = 'You left the call.';
  document.body.classList.add('left');
  setNotice('call', null);
  setNotice('server', null);
  ui.hangup.disabled = true;
  ui.rejoin.hidden = false;
}

// Closing or reloading the tab: tell the other side at once instead of leaving it to notice
// a dead connection. A late `bye` is harmless: it names a session that no longer exists.
function sayByeOnUnload() {
  if (left || !sid) return;
  const body = JSON.stringify({ sid, peer: peerId });
  const url = `/channel/send/${encodeURIComponent(room)}/bye`;
  // A keepalive fetch outlives the page like a beacon does, and (unlike sendBeacon) can carry
  // the identity headers --strict-peers asks for.
  if (identity) {
    const headers = identityHeaders();
    fetch(url, { method: 'POST', body, headers, keepalive: true }).catch(() => {});
  } else if (navigator.sendBeacon) {
    navigator.sendBeacon(url, body);
  }
}

start();

// The call page: everyone in the room sees everyone else, one RTCPeerConnection per other
// person (a mesh). This file is the page itself: what it shows, the room's membership, and
// which connection each signaling message belongs to. Its parts live beside it: relay.js (who
// we are, the event stream, ordered and addressed posts, the goodbye), peer.js (one
// connection, perfect negotiation), media.js (camera, microphone, screen, bitrate caps),
// path.js (direct or relayed), chat.js (the text chat).
//
// Signaling in a group (between our pages): `presence` lists the peer ids present; the page's
// first presence that lists itself names everyone who was there before it, and it offers to
// each of them (the newcomer offers); anyone who joins later offers to us. Offers, answers and
// candidates go as `signal` events addressed to one peer (`?to=ID`: the relay delivers them to
// that peer's streams only), stamped `from` by the relay, carrying this page load's `session`
// so a reload (a new session from the same id) replaces the old connection at once. Glare
// (both offering at once) is settled by perfect negotiation: the larger id is polite.
//
// The seed's pages (wait.html and join.html, anonymous streams that are not in `present`) are
// called in a two-person room exactly as before: the joiner sends its offer as `request`, the
// creator answers with `response`, candidates go as `ice1` (creator) and `ice2` (joiner), bodies
// `{sdp}` / `{ice}`, broadcast and unstamped on the seed's side.
//
// The test switch `?relay=1` makes the page use TURN relay candidates only.

import { joinRoom, randomId, serverData, publishedData } from './relay.js';
import { Peer } from './peer.js';
import { openMedia, listDevices, fillDeviceSelect, openTrack, openScreen, videoCaps, capSender } from './media.js';
import { watchPaths, PATH_WORDS } from './path.js';
import { setupChat } from './chat.js';
import { isValidRoom, joinUrl, copyText, ROOM_RULE } from './room.js';
import * as support from './support.js';

const $ = (selector) => document.querySelector(selector);
const ui = {
  remotes: $('#remotes'),
  local: $('#local'),
  status: $('#status'),
  notice: $('#notice'),
  roomName: $('#room-name'),
  role: $('#role'),
  link: $('#link'),
  copy: $('#copy'),
  copied: $('#copied'),
  mute: $('#mute'),
  camera: $('#camera'),
  share: $('#share'),
  flip: $('#flip'),
  audioOnly: $('#audio-only'),
  cameraChoice: $('#camera-choice'),
  micChoice: $('#mic-choice'),
  hangup: $('#hangup'),
  rejoin: $('#rejoin'),
  retry: $('#retry'),
  play: $('#play'),
  placeholder: $('#placeholder'),
  path: $('#path'),
  qr: $('#qr'),
  chat: $('#chat'),
  chatInput: $('#chat-input'),
  chatLog: $('#chat-log'),
  name: $('#name'),
};

const params = new URLSearchParams(location.search);
const role = params.get('as') === 'creator' ? 'creator' : 'joiner';
const forceRelay = params.get('relay') === '1';
const room = roomFromPath();
const session = randomId(); // this page load: a reload is a new session of the same peer id
const SEED = 'seed'; // the tile of a seed page (its stream is anonymous)

// --- state -----------------------------------------------------------------------------------

let relay = null;
let iceServers = [];
let localStream = null;
let screenTrack = null; // what we share instead of the camera, while we do
let audioOnly = false;
let left = false;
let joined = false; // our first presence (the one listing us) has come
let historyEnd = 0; // events up to this id were history when we joined: chat only is used
let others = []; // the other peer ids present, from the latest presence
let anonymous = 0; // streams without a peer id (a seed page) in the room
const peers = new Map(); // id -> {peer, session, name, tile, video, chain}
const gone = new Map(); // id -> the session that said bye (not called again until it is back)
let seed = null; // the connection to a seed page, when the room is us and one
let seedWatchdog = null;
let connections = 0;
let stopPaths = null;
let showChat = null;
let ready; // resolves when the camera question is settled and /config is in
const setUp = new Promise((resolve) => {
  ready = resolve;
});

function myName() {
  return ui.name.value.trim().slice(0, 40) || `Guest ${relay.peerId.slice(0, 4)}`;
}

// --- what the page shows ---------------------------------------------------------------------

const STATUS_WORDS = {
  waiting: () => 'Waiting for others to join',
  connecting: () => 'Connecting…',
  connected: () => (tileCount() > 1 ? `Connected to ${tileCount()} people` : 'Connected'),
  disconnected: () => 'Connection interrupted, reconnecting…',
  failed: () => 'Connection failed',
};

const PLACEHOLDER = {
  waiting: () =>
    role === 'creator'
      ? 'Waiting for someone to join. Send them the invite link below.'
      : 'Waiting for the others…',
  connecting: () => '',
};

function setState(state, words) {
  document.body.dataset.state = state;
  ui.status.textContent = words ?? STATUS_WORDS[state]();
  const placeholder = PLACEHOLDER[state];
  ui.placeholder.textContent = placeholder ? placeholder() : (words ?? '');
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

const tileCount = () => peers.size + (seed ? 1 : 0);
const allEntries = () => [...peers.values(), ...(seed ? [seed] : [])];

/** A labelled video for one other person. */
function makeTile(id, name) {
  const tile = document.createElement('div');
  tile.className = 'tile';
  tile.dataset.peer = id;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.dataset.peer = id;
  const label = document.createElement('span');
  label.className = 'label';
  label.textContent = name;
  tile.append(video, label);
  ui.remotes.append(tile);
  return { tile, video, label };
}

function playAll() {
  for (const entry of allEntries()) {
    entry.video.play().catch((error) => {
      // Autoplay with sound refused (no camera permission, no click yet): offer a button.
      if (error.name === 'NotAllowedError') ui.play.hidden = false;
    });
  }
}

/** Brings the page in line with the connections: tiles, counts, the overall state, caps. */
function render() {
  if (left) return;
  const count = tileCount();
  ui.remotes.dataset.count = String(count);
  // Other people present: the peer ids listed, or a seed page (anonymous) when we are two.
  const seedHere = anonymous > 0 && others.length === 0;
  document.body.dataset.peers = String(others.length + (seedHere ? 1 : 0));
  const entries = allEntries();
  for (const entry of entries) {
    entry.tile.dataset.state = entry.peer.state;
    if (entry.video.srcObject !== entry.peer.stream && entry.peer.stream.getTracks().length > 0) {
      entry.video.srcObject = entry.peer.stream;
      playAll();
    }
  }
  let state;
  if (count === 0) state = 'waiting';
  else if (entries.every((e) => e.peer.state === 'connected')) state = 'connected';
  else if (entries.some((e) => ['disconnected', 'failed'].includes(e.peer.state) && e.peer.connections > 0)) {
    state = 'disconnected';
  } else state = 'connecting';
  if (state === 'connected' && document.body.dataset.state !== 'connected') {
    connections += 1;
    document.body.dataset.connections = String(connections);
    setNotice('call', null);
    setNotice('support', null); // browser support: someone who can call is here now
  }
  if (state !== document.body.dataset.state || state === 'connected') setState(state);
  // Everyone's uplink is shared by all the connections: caps shrink as the room grows.
  const caps = videoCaps(count);
  for (const entry of entries) {
    if (entry.peer.state === 'connected') capSender(entry.peer.sender('video'), caps);
  }
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
  ui.camera.addEventListener('click', () => toggleTracks('video', ui.camera, 'Camera off', 'Camera on'));
  ui.share.addEventListener('click', () => (screenTrack ? stopSharing() : startSharing()));
  ui.flip.addEventListener('click', flipCamera);
  ui.audioOnly.addEventListener('click', toggleAudioOnly);
  ui.cameraChoice.addEventListener('change', () => useDevice('video', ui.cameraChoice.value));
  ui.micChoice.addEventListener('change', () => useDevice('audio', ui.micChoice.value));
  ui.hangup.addEventListener('click', hangUp);
  ui.retry.addEventListener('click', () => location.reload());
  ui.play.addEventListener('click', () => {
    ui.play.hidden = true;
    playAll();
  });
  try {
    ui.name.value = localStorage.getItem('sigrelay.name') ?? '';
  } catch {
    // No storage: the default name.
  }
  ui.name.addEventListener('change', () => {
    try {
      localStorage.setItem('sigrelay.name', ui.name.value.trim().slice(0, 40));
    } catch {
      // No storage: the name lasts as long as the page.
    }
  });
  window.addEventListener('pagehide', () => {
    if (!left && relay) relay.sayGoodbye('bye', { peer: relay.peerId, session });
  });

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
    support.announceCannotCall(room, `/stream?channel=${encodeURIComponent(room)}`, missing, randomId());
    return;
  }
  // --- end browser support ---
  setState('waiting', 'Connecting to the server…');
  const asking = setTimeout(
    () => setNotice('media', 'Allow this page to use your camera and microphone (see the browser’s prompt).'),
    1000,
  );
  // The stream opens at once (a full room is reported before any camera prompt matters);
  // connections wait for the camera and /config.
  Promise.all([
    openMedia().then((media) => {
      clearTimeout(asking);
      showLocalMedia(media);
    }),
    loadConfig(),
  ]).then(ready);
  relay = joinRoom(room, role, { onOpen, onEvent, onDrop, onRefused }, { replayFirst: true });
  document.body.dataset.me = relay.peerId;
  showChat = setupChat({
    form: ui.chat,
    input: ui.chatInput,
    log: ui.chatLog,
    send: (text) => relay.send('chat', { text, name: myName(), peer: relay.peerId }),
  });
  stopPaths = watchPaths(() => allEntries().filter((e) => e.peer.state === 'connected').map((e) => e.peer.pc), showPath);
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

const rtcConfig = () => ({ iceServers, iceTransportPolicy: forceRelay ? 'relay' : 'all' });

// --- camera, microphone, screen --------------------------------------------------------------

function showLocalMedia({ stream, kind, notice }) {
  localStream = stream;
  document.body.dataset.media = kind;
  setNotice('media', notice, notice ? 'warn' : 'info');
  if (left) {
    stopLocalMedia();
    return;
  }
  const hasVideo = !!stream && stream.getVideoTracks().length > 0;
  const hasAudio = !!stream && stream.getAudioTracks().length > 0;
  ui.mute.disabled = !hasAudio;
  ui.camera.disabled = !hasVideo;
  ui.share.disabled = !hasVideo || !navigator.mediaDevices?.getDisplayMedia;
  document.body.classList.toggle('no-local-video', !hasVideo);
  if (hasVideo) {
    ui.local.muted = true; // never play our own microphone back
    ui.local.srcObject = stream;
    ui.local.play().catch(() => {});
  }
  if (stream) showDevices();
}

async function showDevices() {
  const devices = await listDevices();
  const current = (kind) => localStream?.getTracks().find((t) => t.kind === kind)?.getSettings().deviceId;
  fillDeviceSelect(ui.cameraChoice, devices.videoinput, current('video'));
  fillDeviceSelect(ui.micChoice, devices.audioinput, current('audio'));
  ui.flip.hidden = devices.videoinput.length < 2;
}

function stopLocalMedia() {
  localStream?.getTracks().forEach((track) => track.stop());
  screenTrack?.stop();
  ui.local.srcObject = null;
  document.body.classList.add('no-local-video');
  ui.mute.disabled = ui.camera.disabled = ui.share.disabled = true;
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

/** The tracks a new connection sends: the microphone, and the screen or the camera. */
function outgoingTracks() {
  if (!localStream) return [];
  const audio = localStream.getAudioTracks();
  const camera = localStream.getVideoTracks();
  const video = audioOnly ? [] : screenTrack ? [screenTrack] : camera;
  return [...audio, ...video];
}

/** What every connection sends as its `kind` track now (no renegotiation: replaceTrack). */
function sendEverywhere(kind, track) {
  for (const entry of allEntries()) {
    entry.peer.sender(kind)?.replaceTrack(track).catch((error) => console.warn('sigrelay: replaceTrack:', error));
  }
}

function currentVideo() {
  if (audioOnly) return null;
  return screenTrack ?? localStream?.getVideoTracks()[0] ?? null;
}

async function startSharing() {
  const track = await openScreen();
  if (!track || left) return;
  screenTrack = track;
  track.addEventListener('ended', stopSharing);
  sendEverywhere('video', currentVideo());
  ui.local.srcObject = new MediaStream([track]);
  ui.share.textContent = 'Stop sharing';
  ui.share.setAttribute('aria-pressed', 'true');
  document.body.dataset.sharing = 'true';
}

function stopSharing() {
  if (!screenTrack) return;
  screenTrack.stop();
  screenTrack = null;
  sendEverywhere('video', currentVideo());
  ui.local.srcObject = localStream;
  ui.share.textContent = 'Share screen';
  ui.share.setAttribute('aria-pressed', 'false');
  delete document.body.dataset.sharing;
}

/** Switches to the camera or microphone `deviceId` during the call, without reconnecting. */
async function useDevice(kind, deviceId, facingMode) {
  if (!localStream) return;
  let track;
  try {
    track = await openTrack(kind, { deviceId, facingMode });
  } catch (error) {
    setNotice('device', `Could not switch the ${kind === 'video' ? 'camera' : 'microphone'}: ${error.message}`, 'warn');
    return;
  }
  setNotice('device', null);
  const old = localStream.getTracks().find((t) => t.kind === kind);
  if (old) {
    track.enabled = old.enabled;
    localStream.removeTrack(old);
    old.stop();
  }
  localStream.addTrack(track);
  if (kind === 'audio') sendEverywhere('audio', track);
  else if (!screenTrack) {
    sendEverywhere('video', currentVideo());
    ui.local.srcObject = localStream;
  }
}

// Front and rear camera: by facing mode where the browser knows it, else the next camera.
async function flipCamera() {
  const track = localStream?.getVideoTracks()[0];
  const facing = track?.getSettings().facingMode;
  if (facing) {
    await useDevice('video', null, facing === 'environment' ? 'user' : 'environment');
  } else {
    const options = [...ui.cameraChoice.options];
    const at = options.findIndex((o) => o.selected);
    const next = options[(at + 1) % options.length];
    if (next) await useDevice('video', next.value);
  }
  showDevices();
}

// Audio only: stop sending our picture and hide everyone's (for a weak network).
function toggleAudioOnly() {
  audioOnly = !audioOnly;
  sendEverywhere('video', currentVideo());
  document.body.classList.toggle('audio-only', audioOnly);
  ui.audioOnly.setAttribute('aria-pressed', String(audioOnly));
  ui.audioOnly.textContent = audioOnly ? 'Video on' : 'Audio only';
}

// --- the mesh ---------------------------------------------------------------------------------

/** The connection to `id`, made if there is none. */
function ensurePeer(id, { offerFirst, remoteSession = null, name = null }) {
  let entry = peers.get(id);
  if (entry) return entry;
  const label = name ?? `Guest ${id.slice(0, 4)}`;
  const peer = new Peer({
    id,
    polite: relay.peerId > id,
    offerFirst,
    config: rtcConfig(),
    tracks: outgoingTracks(),
    send: (signal) => relay.send('signal', { ...signal, session, name: myName(), peer: relay.peerId, to: id }, id),
    onChange: render,
  });
  entry = { peer, session: remoteSession, name: label, chain: Promise.resolve(), ...makeTile(id, label) };
  peers.set(id, entry);
  render();
  return entry;
}

function dropPeer(id, why) {
  const entry = peers.get(id);
  if (!entry) return;
  entry.peer.close();
  entry.tile.remove();
  peers.delete(id);
  if (why === 'left') {
    setNotice('call', `Peer left: ${entry.name} has left the call.${tileCount() === 0 ? ' Waiting for others…' : ''}`);
  }
  render();
}

function onPresence(info) {
  const present = Array.isArray(info.present) ? info.present.filter((id) => typeof id === 'string') : null;
  if (!present) return; // a relay without the list: the seed's flow only
  const me = relay.peerId;
  if (!joined) {
    if (!present.includes(me)) return; // an older announcement that crossed our join
    joined = true;
    others = present.filter((id) => id !== me);
    anonymous = Math.max(0, info.subscribers - present.length);
    // Everyone here before us: we are the newcomer, we offer.
    others.forEach((id) => ensurePeer(id, { offerFirst: true }));
  } else {
    others = present.filter((id) => id !== me);
    anonymous = Math.max(0, info.subscribers - present.length);
    for (const id of [...peers.keys()]) if (!others.includes(id)) dropPeer(id, 'left');
    for (const id of [...gone.keys()]) if (!others.includes(id)) gone.delete(id);
    for (const id of others) if (!gone.has(id)) ensurePeer(id, { offerFirst: false });
  }
  seedPresence();
  render();
}

function onSignal(message, from, eventId) {
  if (!from || from === relay.peerId || (message.to && message.to !== relay.peerId)) return;
  if (!Number.isFinite(eventId) || eventId <= historyEnd) return;
  const remoteSession = typeof message.session === 'string' ? message.session : null;
  let entry = peers.get(from);
  if (entry && entry.session && remoteSession && entry.session !== remoteSession) {
    // The other page reloaded: its new session starts a new connection.
    dropPeer(from, 'reloaded');
    entry = null;
  }
  if (!entry) {
    if (message.description?.type !== 'offer') return; // the rest of a session that is over
    gone.delete(from);
    entry = ensurePeer(from, { offerFirst: false, remoteSession, name: message.name });
  }
  entry.session ??= remoteSession;
  if (typeof message.name === 'string' && message.name && message.name !== entry.name) {
    entry.name = message.name.slice(0, 40);
    entry.label.textContent = entry.name;
  }
  const { peer } = entry;
  entry.chain = entry.chain
    .then(() => peer.receive({ description: message.description, candidate: message.candidate }))
    .catch((error) => console.warn('sigrelay: signaling step failed:', error));
}

function onBye(message, from) {
  const id = from ?? message.peer;
  if (!id || id === relay.peerId) return;
  const entry = peers.get(id);
  if (entry && (!entry.session || entry.session === message.session)) {
    gone.set(id, message.session);
    dropPeer(id, 'left');
  }
}

// --- the seed's pages: one of them and us in a room --------------------------------------------

function seedPresence() {
  const seedHere = anonymous > 0 && others.length === 0;
  if (!seedHere) {
    if (seed) dropSeed('left');
    return;
  }
  if (role === 'joiner' && !seed) startSeedCall();
  else if (role === 'creator' && !seed) setState('waiting', 'Someone is here, waiting for their call…');
}

function seedSender(offerer) {
  return ({ description, candidate }) => {
    if (description) relay.send(offerer ? 'request' : 'response', { sdp: description, peer: relay.peerId });
    if (candidate) relay.send(offerer ? 'ice2' : 'ice1', { ice: candidate });
  };
}

function newSeedPeer(offerer) {
  dropSeed();
  const peer = new Peer({
    id: SEED,
    polite: false,
    offerFirst: offerer,
    answerOnly: !offerer,
    config: rtcConfig(),
    tracks: outgoingTracks(),
    send: seedSender(offerer),
    onChange: render,
  });
  seed = { peer, name: 'Guest', chain: Promise.resolve(), ...makeTile(SEED, 'Guest') };
  render();
  return seed;
}

// Our joiner calls a seed creator (wait.html); an offer nobody answers is made again.
function startSeedCall(delay = 10000) {
  if (left || others.length > 0 || anonymous === 0) return;
  newSeedPeer(true);
  clearTimeout(seedWatchdog);
  seedWatchdog = setTimeout(() => {
    if (seed && !seed.peer.pc.remoteDescription) startSeedCall(Math.min(delay * 2, 60000));
  }, delay);
}

function dropSeed(why) {
  clearTimeout(seedWatchdog);
  if (!seed) return;
  seed.peer.close();
  seed.tile.remove();
  seed = null;
  if (why === 'left') setNotice('call', 'Peer left: the other person has left the call. Waiting for others…');
  render();
}

function onSeedMessage(type, message) {
  if (type === 'request' && role === 'creator' && message.sdp && others.length === 0) {
    const entry = newSeedPeer(false);
    entry.chain = entry.chain.then(() => entry.peer.receive({ description: message.sdp }));
  } else if (seed && (type === 'response' || type === 'ice1' || type === 'ice2')) {
    const mine = role === 'joiner' ? ['response', 'ice1'] : ['ice2'];
    if (!mine.includes(type)) return;
    const entry = seed;
    const signal = message.sdp ? { description: message.sdp } : { candidate: message.ice };
    entry.chain = entry.chain
      .then(() => entry.peer.receive(signal))
      .catch((error) => console.warn('sigrelay: seed signaling step failed:', error));
  }
}

// --- the event stream ------------------------------------------------------------------------

function onOpen() {
  setNotice('server', null);
}

function onDrop() {
  if (!left) setNotice('server', 'Lost the connection to the server, reconnecting…', 'warn');
}

function onRefused(error) {
  left = true; // nothing more happens on this page until the person tries again
  stopLocalMedia();
  for (const id of [...peers.keys()]) dropPeer(id);
  dropSeed();
  stopPaths?.();
  ui.hangup.disabled = true;
  ui.retry.hidden = false;
  if (error.status === 409 && error.message === 'room is full') {
    document.body.dataset.state = 'failed';
    ui.status.textContent = 'This room is full';
    ui.placeholder.textContent = 'This room is full';
    setNotice(
      'call',
      'This room is full: as many people as this server allows are already in this call. ' +
        'Ask them for a new room, or try again later.',
      'error',
    );
  } else {
    setState('failed', 'Cannot join this room');
    setNotice('call', `The server refused this room: ${error.message}`, 'error');
  }
}

// Chat is shown at once; everything else waits, in the order it came, until the camera question
// is settled and /config is in (a connection made before would carry no media).
let inbox = setUp;
function onEvent(event) {
  if (left) return;
  if (event.type === 'chat') {
    onChat(event);
    return;
  }
  inbox = inbox.then(() => {
    if (!left) dispatch(event);
  });
}

function onChat(event) {
  const published = publishedData(event);
  if (!published || typeof published.message.text !== 'string') return;
  const { message, from } = published;
  const mine = from === relay.peerId;
  const who = mine ? 'You' : typeof message.name === 'string' && message.name ? message.name.slice(0, 40) : 'Guest';
  showChat(who, message.text, { mine, id: event.lastEventId });
}

function dispatch(event) {
  const eventId = Number(event.lastEventId);
  if (event.type === 'presence') {
    const info = serverData(event);
    if (info && typeof info.subscribers === 'number') onPresence(info);
    return;
  }
  if (event.type === 'gap') {
    // Events we missed are gone: any connection not up starts over, with us offering.
    if (!joined) return;
    for (const [id, entry] of [...peers]) {
      if (entry.peer.state !== 'connected') {
        dropPeer(id);
        ensurePeer(id, { offerFirst: true });
      }
    }
    return;
  }
  const published = publishedData(event);
  if (!published) return;
  const { message, from } = published;
  // --- browser support (assets/support.js): someone's browser cannot call ---
  if (event.type === support.UNSUPPORTED_TYPE) {
    if (joined && message.peer !== relay.peerId) setNotice('support', support.otherCannotText(message), 'warn');
    return;
  }
  // --- end browser support ---
  if (!joined && Number.isFinite(eventId)) historyEnd = Math.max(historyEnd, eventId);
  if (!joined) return; // history: signaling of calls that are over
  if (event.type === 'signal') onSignal(message, from, eventId);
  else if (event.type === 'bye') onBye(message, from);
  else if (from === null) onSeedMessage(event.type, message);
}

// --- leaving ---------------------------------------------------------------------------------

function hangUp() {
  if (left) return;
  relay.send('bye', { peer: relay.peerId, session });
  left = true;
  for (const id of [...peers.keys()]) dropPeer(id);
  dropSeed();
  stopPaths?.();
  showPath(null);
  relay.flushed().then(() => relay.close());
  stopLocalMedia();
  ui.remotes.dataset.count = '0';
  document.body.dataset.peers = '0';
  setState('disconnected', 'You left the call');
  ui.placeholder.textContent = 'You left the call.';
  document.body.classList.add('left');
  setNotice('call', null);
  setNotice('server', null);
  ui.hangup.disabled = true;
  ui.rejoin.hidden = false;
}

start();

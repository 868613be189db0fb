// The camera check (/check): a preview, a microphone level meter, the devices there are, and
// whether this server's STUN and TURN answer (ICE candidates gathered with /config's servers;
// TURN tested alone with iceTransportPolicy "relay"), before anyone joins a call.

import { openMedia, listDevices } from './media.js';

const $ = (selector) => document.querySelector(selector);

function line(list, text, kind = '') {
  const item = document.createElement('li');
  item.textContent = text;
  if (kind) item.className = kind;
  list.append(item);
  return item;
}

async function checkMedia() {
  const { stream, kind, notice } = await openMedia();
  document.body.dataset.media = kind;
  $('#media-result').textContent = notice ?? 'Camera and microphone work.';
  if (!stream) return;
  $('#preview').srcObject = stream;
  if (stream.getAudioTracks().length > 0 && window.AudioContext) {
    const audio = new AudioContext();
    const analyser = audio.createAnalyser();
    analyser.fftSize = 512;
    audio.createMediaStreamSource(stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    const tick = () => {
      analyser.getFloatTimeDomainData(samples);
      const rms = Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
      $('#level').value = Math.min(1, rms * 4);
      requestAnimationFrame(tick);
    };
    tick();
  }
  const devices = await listDevices();
  for (const [kind, label] of [['videoinput', 'Camera'], ['audioinput', 'Microphone']]) {
    if (devices[kind].length === 0) line($('#devices'), `${label}: none found`, 'warn');
    devices[kind].forEach((d, i) => line($('#devices'), `${label}: ${d.label || `${label} ${i + 1}`}`));
  }
}

/** The candidate types gathered with `servers` and `policy` within a few seconds. */
async function gather(servers, policy) {
  const pc = new RTCPeerConnection({ iceServers: servers, iceTransportPolicy: policy });
  pc.createDataChannel('check');
  const types = new Set();
  const done = new Promise((resolve) => {
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate) resolve();
      else if (candidate.type) types.add(candidate.type);
      else if (/ typ (\w+)/.test(candidate.candidate)) types.add(/ typ (\w+)/.exec(candidate.candidate)[1]);
    };
    setTimeout(resolve, 5000);
  });
  await pc.setLocalDescription(await pc.createOffer());
  await done;
  pc.close();
  return types;
}

async function checkIce() {
  const list = $('#ice');
  let servers = [];
  try {
    const response = await fetch('/config?room=check', { cache: 'no-store' });
    servers = (await response.json()).iceServers ?? [];
  } catch {
    line(list, 'The server did not answer /config.', 'warn');
  }
  const urls = (s) => (Array.isArray(s.urls) ? s.urls : [s.urls]);
  const stun = servers.filter((s) => urls(s).some((u) => /^stun:/.test(u)));
  const turn = servers.filter((s) => urls(s).some((u) => /^turns?:/.test(u)));
  if (servers.length === 0) {
    line(list, 'This server offers no STUN or TURN: calls work within one network only.');
    document.body.dataset.ice = 'none';
    return;
  }
  const all = await gather(servers, 'all');
  const reflexive = all.has('srflx');
  if (stun.length > 0) {
    line(list, reflexive ? 'STUN answers.' : 'STUN did not answer (a firewall?).', reflexive ? '' : 'warn');
  }
  let relayed = null;
  if (turn.length > 0) {
    relayed = (await gather(turn, 'relay')).has('relay');
    line(list, relayed ? 'TURN relays: calls work even across firewalls.' : 'TURN did not answer.', relayed ? '' : 'warn');
  }
  document.body.dataset.ice = relayed === false || (stun.length > 0 && !reflexive) ? 'trouble' : 'ok';
}

checkMedia().finally(checkIce);

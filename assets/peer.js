// One connection to one other person: an RTCPeerConnection with "perfect negotiation" (W3C
// WebRTC 1.0, §10.7), so both sides may offer at once and still end up connected: the polite
// side rolls back its own offer, the impolite side ignores the other's. Which side offers first
// is a fixed rule the caller applies (`offerFirst`: the newcomer offers to everyone present);
// the other side waits for that offer and offers itself only if none came (`fallbackMs`).
//
// Signaling is abstract here: `send({description} | {candidate})` and `receive(...)`. The mesh
// sends them as addressed `signal` events; the seed's two-person flow maps them onto its
// request/response/ice1/ice2 events (`answerOnly`: a seed joiner always offers, so we never do).

// A short record of what each connection did, for people (and tests) looking into a slow call.
const trace = (...parts) => {
  const log = (globalThis.sigrelayTrace ??= []);
  log.push(`${Math.round(performance.now())} ${parts.join(' ')}`);
  if (log.length > 300) log.shift();
};

export class Peer {
  constructor({ id, polite, offerFirst, answerOnly = false, config, tracks, send, onChange }) {
    this.id = id;
    this.polite = polite;
    this.send = send;
    this.onChange = onChange;
    this.answerOnly = answerOnly;
    this.canOffer = offerFirst && !answerOnly;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.closed = false;
    this.stream = new MediaStream();
    this.state = 'new';
    this.connections = 0;
    this.pendingCandidates = [];
    const pc = new RTCPeerConnection(config);
    this.pc = pc;
    pc.onnegotiationneeded = () => this.offer();
    pc.onicecandidate = ({ candidate }) => {
      if (!this.closed && candidate && candidate.candidate) this.send({ candidate });
    };
    pc.ontrack = ({ track }) => {
      if (this.closed) return;
      if (!this.stream.getTracks().includes(track)) this.stream.addTrack(track);
      this.onChange(this);
    };
    let last = null;
    const changed = () => {
      const state = connectionState(pc);
      if (this.closed || state === last) return;
      last = state;
      this.state = state;
      trace(this.id, 'state', state);
      if (state === 'connected') this.connections += 1;
      // ICE that failed gets a restart (both sides may ask: negotiation sorts it out).
      if (state === 'failed' && !this.answerOnly) {
        this.canOffer = true;
        pc.restartIce?.();
      }
      this.onChange(this);
    };
    pc.onconnectionstatechange = changed;
    pc.oniceconnectionstatechange = changed;
    this.pendingTracks = tracks;
    if (!answerOnly) this.addTracks(tracks);
    // The side that waits offers after all if no offer came (the other page is a stale one, or
    // both thought the other was the newcomer).
    if (!this.canOffer && !answerOnly) {
      this.fallback = setTimeout(() => {
        if (this.closed || this.pc.remoteDescription) return;
        this.canOffer = true;
        trace(this.id, 'no offer came: offering');
        this.offer();
      }, 3000);
    }
  }

  addTracks(tracks) {
    this.tracksAdded = true;
    const kinds = new Set();
    // With a stream: the seed's pages show `event.streams[0]` and nothing without one.
    const outgoing = new MediaStream();
    for (const track of tracks) {
      this.pc.addTrack(track, outgoing);
      kinds.add(track.kind);
    }
    // Receive what we cannot send, so a receive-only page still gets audio and video (an
    // answer can only take what the offer has).
    if (this.answerOnly) return;
    for (const kind of ['audio', 'video']) {
      if (!kinds.has(kind)) this.pc.addTransceiver(kind, { direction: 'recvonly' });
    }
  }

  async offer() {
    if (this.closed || !this.canOffer) return;
    try {
      this.makingOffer = true;
      trace(this.id, 'offer');
      await this.pc.setLocalDescription();
      if (!this.closed) this.send({ description: this.pc.localDescription });
    } catch (error) {
      console.warn(`sigrelay: offer to ${this.id} failed:`, error);
    } finally {
      this.makingOffer = false;
    }
  }

  async receive({ description, candidate }) {
    if (this.closed) return;
    const pc = this.pc;
    if (description) {
      const collision =
        description.type === 'offer' && (this.makingOffer || pc.signalingState !== 'stable');
      this.ignoreOffer = !this.polite && collision;
      trace(this.id, 'got', description.type, collision ? 'collision' : '', this.ignoreOffer ? 'ignored' : '');
      if (this.ignoreOffer) return;
      clearTimeout(this.fallback);
      await pc.setRemoteDescription(description);
      if (description.type === 'offer') {
        // The seed's flow: our tracks go in only now, so the answer carries them and
        // nothing makes us offer.
        if (this.answerOnly && !this.tracksAdded) this.addTracks(this.pendingTracks);
        await pc.setLocalDescription();
        if (!this.closed) this.send({ description: pc.localDescription });
      }
      this.canOffer = !this.answerOnly;
      const waiting = this.pendingCandidates;
      this.pendingCandidates = [];
      for (const c of waiting) await this.addCandidate(c);
    } else if (candidate) {
      if (!pc.remoteDescription) {
        this.pendingCandidates.push(candidate);
        if (this.pendingCandidates.length > 200) this.pendingCandidates.shift();
        return;
      }
      await this.addCandidate(candidate);
    }
  }

  async addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (error) {
      if (!this.ignoreOffer && !this.closed) console.warn('sigrelay: ignored an ICE candidate:', error);
    }
  }

  /** The sender of our `kind` track (or the one that could carry it). */
  sender(kind) {
    return (
      this.pc.getTransceivers().find((t) => t.sender.track?.kind === kind)?.sender ??
      this.pc.getTransceivers().find((t) => t.receiver.track?.kind === kind && t.direction !== 'recvonly')
        ?.sender ??
      null
    );
  }

  close() {
    this.closed = true;
    clearTimeout(this.fallback);
    const pc = this.pc;
    pc.onnegotiationneeded = pc.onicecandidate = pc.ontrack = null;
    pc.onconnectionstatechange = pc.oniceconnectionstatechange = null;
    pc.close();
  }
}

export function connectionState(pc) {
  if (pc.connectionState) return pc.connectionState;
  // Browsers without connectionState: derive it from the ICE state.
  return { checking: 'connecting', completed: 'connected' }[pc.iceConnectionState] ?? pc.iceConnectionState;
}

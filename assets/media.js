// Camera and microphone: opening them (saying why not, in words a person can act on), the
// devices there are, switching a device or the facing camera, screen sharing, and the
// per-sender caps that shrink as the room grows. Nothing here knows about the relay.

export function mediaReason(error) {
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

const RECEIVE_ONLY = 'you joined receive-only (you can see and hear the others, they cannot see or hear you)';

/**
 * Opens the camera and microphone, falling back to one of them. Resolves to
 * `{stream, kind, notice}`: kind is `audio+video`, `video`, `audio` or `none` (stream null),
 * notice the words to show (null when all is well).
 */
export async function openMedia() {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    const notice = !window.isSecureContext
      ? 'Camera and microphone are blocked: this page was opened over plain http on a network ' +
        `address, and browsers only allow them over HTTPS or on localhost. ${capital(RECEIVE_ONLY)}. ` +
        'To fix it, start sigrelay with --tls and open its https:// address, or open the ' +
        'page as http://localhost on the computer running sigrelay.'
      : `This browser cannot use a camera or microphone here, so ${RECEIVE_ONLY}.`;
    return { stream: null, kind: 'none', notice };
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
      const why = mediaReason(firstError);
      const notice =
        kind === 'video'
          ? `No microphone (${why}): you joined with video only.`
          : kind === 'audio'
            ? `No camera (${why}): you joined with audio only.`
            : null;
      return { stream, kind, notice };
    } catch (error) {
      firstError ??= error;
    }
  }
  return {
    stream: null,
    kind: 'none',
    notice: `Camera and microphone are not available (${mediaReason(firstError)}): ${RECEIVE_ONLY}.`,
  };
}

function capital(text) {
  return text[0].toUpperCase() + text.slice(1);
}

/** The cameras and microphones there are: `{videoinput: [...], audioinput: [...]}`. */
export async function listDevices() {
  const found = { videoinput: [], audioinput: [] };
  try {
    for (const device of await navigator.mediaDevices.enumerateDevices()) {
      if (device.kind in found) found[device.kind].push(device);
    }
  } catch {
    // No device list (an old browser): the choice is simply not offered.
  }
  return found;
}

/** Fills `select` with `devices`, the one `current` uses selected; hidden when there is no choice. */
export function fillDeviceSelect(select, devices, current) {
  select.replaceChildren(
    ...devices.map((device, i) => {
      const option = document.createElement('option');
      option.value = device.deviceId;
      option.textContent = device.label || `${device.kind === 'videoinput' ? 'Camera' : 'Microphone'} ${i + 1}`;
      option.selected = device.deviceId === current;
      return option;
    }),
  );
  select.hidden = devices.length < 2;
}

/** A new track of `kind` from the device `deviceId`, or facing `facingMode` (a camera). */
export async function openTrack(kind, { deviceId, facingMode } = {}) {
  const constraints = deviceId ? { deviceId: { exact: deviceId } } : facingMode ? { facingMode: { exact: facingMode } } : true;
  const stream = await navigator.mediaDevices.getUserMedia({ [kind]: constraints });
  return stream.getTracks()[0];
}

/** The screen (or a window or tab) as a video track; null if the person said no. */
export async function openScreen() {
  if (!navigator.mediaDevices?.getDisplayMedia) return null;
  try {
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    return stream.getVideoTracks()[0] ?? null;
  } catch (error) {
    console.info('sigrelay: no screen to share:', error.name);
    return null;
  }
}

/**
 * What one video sender may use when the page sends to `others` people: each sender's uplink
 * is shared by all of them, so the caps shrink as the room grows (a phone on a classroom
 * Wi-Fi has maybe 2-4 Mbit/s up in all).
 */
export function videoCaps(others) {
  if (others <= 1) return { maxBitrate: 1_200_000, scaleResolutionDownBy: 1 };
  if (others === 2) return { maxBitrate: 700_000, scaleResolutionDownBy: 1 };
  if (others === 3) return { maxBitrate: 450_000, scaleResolutionDownBy: 1.5 };
  return { maxBitrate: 300_000, scaleResolutionDownBy: 2 };
}

/** Applies `caps` to `sender`'s encodings (once the sender has been negotiated). */
export async function capSender(sender, caps) {
  if (!sender?.getParameters || !sender.track) return;
  const parameters = sender.getParameters();
  if (!parameters.encodings || parameters.encodings.length === 0) return;
  const encoding = parameters.encodings[0];
  if (
    encoding.maxBitrate === caps.maxBitrate &&
    encoding.scaleResolutionDownBy === caps.scaleResolutionDownBy
  ) {
    return;
  }
  Object.assign(encoding, caps);
  try {
    await sender.setParameters(parameters);
  } catch (error) {
    console.info('sigrelay: could not cap a sender:', error.name);
  }
}

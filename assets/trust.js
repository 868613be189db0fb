// The trust page: shows the CA's fingerprint, opens the section for this device, and tells
// whether this device already trusts the server's https (a request to it succeeds).

const $ = (selector) => document.querySelector(selector);
const status = $('#trust-status');

const https = `https://${location.host}/`;
$('#continue').href = location.protocol === 'https:' ? '/' : https;

// Open the instructions for this kind of device first.
const ua = navigator.userAgent;
const platform = /iPhone|iPad|iPod/.test(ua) || (/Macintosh/.test(ua) && navigator.maxTouchPoints > 1)
  ? 'ios'
  : /Android/.test(ua) ? 'android' : 'laptop';
for (const id of ['ios', 'android', 'laptop']) $(`#${id}`).open = id === platform;

async function trusted() {
  if (location.protocol === 'https:') return true;
  try {
    // An opaque answer is enough: it fails only when TLS does (an untrusted certificate).
    await fetch(`${https}trust/info`, { mode: 'no-cors', cache: 'no-store' });
    return true;
  } catch {
    return false;
  }
}

async function main() {
  let info = { ca: false };
  try {
    info = await (await fetch('/trust/info', { cache: 'no-store' })).json();
  } catch (error) {
    console.warn('sigrelay: no /trust/info:', error);
  }
  if (!info.ca) {
    $('#no-ca').hidden = false;
    status.textContent = '';
    return;
  }
  $('#with-ca').hidden = false;
  $('#fingerprint').textContent = info.fingerprint;
  const ok = await trusted();
  document.body.dataset.trusted = String(ok);
  status.textContent = ok
    ? 'This device already trusts this server: continue to the video calls.'
    : 'This device does not trust this server yet. Follow the steps for your device, then continue.';
}

main();

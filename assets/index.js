// The landing page: pick or type a room name, then create it (creator's page) or join it.

import {
  isValidRoom,
  randomRoomName,
  roomFromInput,
  joinUrl,
  createUrl,
  copyText,
  ROOM_RULE,
} from './room.js';

const $ = (selector) => document.querySelector(selector);
const input = $('#room');
const error = $('#room-error');
const link = $('#link');
const copied = $('#copied');

input.value = randomRoomName();

function currentName() {
  return roomFromInput(input.value);
}

// Shows the rule while the name is invalid; returns the valid name or null.
function check(showError) {
  const name = currentName();
  const ok = isValidRoom(name);
  input.setAttribute('aria-invalid', String(!ok));
  link.value = ok ? joinUrl(name) : '';
  if (ok || !showError) {
    error.hidden = true;
  } else {
    error.textContent =
      name === ''
        ? `Type a room name first. ${ROOM_RULE}`
        : `“${name}” cannot be a room name. ${ROOM_RULE}`;
    error.hidden = false;
  }
  return ok ? name : null;
}

function go(makeUrl) {
  const name = check(true);
  if (name === null) {
    input.focus();
    return;
  }
  location.assign(makeUrl(name));
}

// Enter in the field: a pasted link means "join that room", a name means "create it".
$('#room-form').addEventListener('submit', (event) => {
  event.preventDefault();
  go(currentName() !== input.value.trim() ? joinUrl : createUrl);
});
$('#create').addEventListener('click', (event) => {
  event.preventDefault();
  go(createUrl);
});
$('#join').addEventListener('click', () => go(joinUrl));
$('#new-name').addEventListener('click', () => {
  input.value = randomRoomName();
  copied.textContent = '';
  check(false);
});
input.addEventListener('input', () => {
  copied.textContent = '';
  check(!error.hidden);
});
input.addEventListener('blur', () => check(true));
$('#copy').addEventListener('click', async () => {
  const name = check(true);
  if (name === null) return;
  const ok = await copyText(joinUrl(name), link);
  copied.textContent = ok ? 'Copied: send it to the other person' : 'Select the link and copy it';
});

check(false);

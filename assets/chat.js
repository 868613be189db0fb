// The room's text chat: the form that sends and the log that shows who said what. Messages go
// through the relay as `chat` events (stamped `from` by the server), so they reach everyone
// present whether or not their video connection is up, and a newcomer sees the ones still in
// the room's history. Text is always shown as text (textContent), never as HTML.

export const MAX_CHAT = 1000;

/**
 * Wires `form`/`input` to `send(text)` and returns `show(who, text, {mine, id})`, which adds a
 * line to `log` (once per event id: a replayed event is not shown twice).
 */
export function setupChat({ form, input, log, send }) {
  const shown = new Set();
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = input.value.trim().slice(0, MAX_CHAT);
    if (!text) return;
    input.value = '';
    send(text);
  });
  return (who, text, { mine = false, id = null } = {}) => {
    if (id !== null) {
      if (shown.has(id)) return;
      shown.add(id);
    }
    const line = document.createElement('li');
    if (mine) line.className = 'mine';
    const name = document.createElement('b');
    name.textContent = who;
    const body = document.createElement('span');
    body.textContent = String(text).slice(0, MAX_CHAT);
    line.append(name, ' ', body);
    log.append(line);
    // Only the last hundred lines are kept on the page.
    while (log.children.length > 100) log.firstElementChild.remove();
    log.scrollTop = log.scrollHeight;
  };
}

// Room names: the rule the server enforces, a random hard-to-guess default,
// and the two URLs of a room (the joiner's shareable link and the creator's page).

/** The relay accepts channel names of 1-128 characters from this set. */
export const ROOM_PATTERN = /^[A-Za-z0-9._~-]{1,128}$/;

export const ROOM_RULE =
  'A room name is 1 to 128 characters: letters A-Z or a-z, digits, and . _ ~ - (no spaces).';

export function isValidRoom(name) {
  return ROOM_PATTERN.test(name);
}

// 256 short, friendly words: three of them plus four digits give about 2^37 names,
// enough that nobody stumbles into someone else's room by guessing.
const WORDS = (
  'acorn agate alder amber anchor apple apricot arrow aspen aster atlas aurora autumn ' +
  'badger bamboo banjo barley basil beacon bear beech berry birch bison blossom bluebell ' +
  'bramble breeze brook bubble button cabin cactus camel canoe canyon carrot cedar cello ' +
  'cherry chestnut cider cinder citrus clover cobalt comet compass copper coral cotton ' +
  'cougar crane crater cricket crystal cypress daisy delta denim dingo dolphin dove dragon ' +
  'dune eagle echo ember emerald falcon feather fennel fern fiddle finch fjord flint ' +
  'forest fossil fox galaxy garden garnet gecko geyser ginger glacier glade granite grape ' +
  'gull harbor harvest hazel heron hickory honey horizon hummus iris island ivory jade ' +
  'jasmine jelly juniper kayak kelp kestrel kettle kiwi koala lagoon lantern larch lark ' +
  'lava lemon lentil lilac lily linden lotus lynx magnet mango maple marble marigold ' +
  'meadow melon meteor mint mirror monsoon moose moss mountain nectar nebula nutmeg oak ' +
  'oasis ocean olive onyx orbit orchid otter owl oyster paddle panda papaya parrot peach ' +
  'pebble pelican pepper petal pine pixel plum pollen pony poppy prairie puffin pumpkin ' +
  'quartz quill quince rabbit radish rain raven reef ribbon river robin rocket rose ' +
  'ruby saffron sage salmon sand sapphire satin seal sequoia shell sierra silver sky ' +
  'sparrow spruce squash star stone storm sugar summit sun swan tango teal thistle thunder ' +
  'tiger timber topaz tulip tundra turtle umber valley velvet violet volcano walnut walrus ' +
  'wave willow wind winter wolf wren yarrow yew zebra zenith zephyr zinc zucchini ' +
  'lichen meerkat nomad pearl nova orca pansy quail sorrel tapir tofu vanilla waffle yak'
).split(' ');

/** A random room name such as `amber-otter-violet-4821`, from the browser's CSPRNG. */
export function randomRoomName() {
  const r = new Uint32Array(4);
  crypto.getRandomValues(r);
  const words = [0, 1, 2].map((i) => WORDS[r[i] % WORDS.length]);
  const digits = String(r[3] % 10000).padStart(4, '0');
  return `${words.join('-')}-${digits}`;
}

/** Accepts a bare name or a pasted room link (`https://host/r/NAME...`) and returns the name. */
export function roomFromInput(value) {
  const text = value.trim();
  const match = /\/r\/([^/?#\s]+)/.exec(text);
  if (match && /^(https?:\/\/|\/)/.test(text)) {
    try {
      return decodeURIComponent(match[1]);
    } catch {
      return match[1];
    }
  }
  return text;
}

/** The link to give to the other person: opens the room as the joiner. */
export function joinUrl(name, origin = location.origin) {
  return `${origin}/r/${encodeURIComponent(name)}`;
}

/** The page of whoever creates the room (the seed's "wait" page). */
export function createUrl(name, origin = location.origin) {
  return `${joinUrl(name, origin)}?as=creator`;
}

/** Copies text to the clipboard; falls back to selecting an input for older browsers / http. */
export async function copyText(text, fallbackInput) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // Permission refused or document not focused: fall through to the selection copy.
    }
  }
  if (fallbackInput) {
    fallbackInput.focus();
    fallbackInput.select();
    try {
      return document.execCommand('copy');
    } catch {
      return false;
    }
  }
  return false;
}

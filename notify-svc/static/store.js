// What the app keeps in the browser, and why.
//
// localStorage (survives reloads and restarts of the browser):
// * the cart: item ids, quantities, and the name and price last seen (shown
//   until the menu has loaded);
// * "my orders": the orders placed from (or opened in) this browser, each
//   with its tracking token, so that each stays reopenable. Trade-off: the
//   token is the order's only credential. Whoever can read this browser
//   profile's storage (another person on a shared computer, or a script
//   injected into this origin) can read the order, including the name,
//   address and phone given at checkout, and cancel it while the kitchen
//   has not handed it over. The alternative, keeping it in memory or
//   sessionStorage, would lose the order on a reload or a closed tab, and
//   the issue asks for reopenable orders. Mitigations: the pages allow no
//   script but their own (Content-Security-Policy) and never put a token in
//   a URL the server sees (only in the fragment); "Forget" removes one;
//   at most MAX_ORDERS are kept.
// * the checkout attempt in progress: its Idempotency-Key and the exact
//   body, written *before* the POST, so that a reload, a crash or a closed
//   tab while the request is in flight resumes with the same key (the
//   server answers the same order, never a second one). It holds the
//   customer's details only until the attempt has an answer.
//
// sessionStorage (this tab only): the checkout form as typed, so that a
// reload does not lose it.

const KEYS = {
  cart: "foodchain.cart.v1",
  orders: "foodchain.orders.v1",
  attempt: "foodchain.checkout.v1",
  details: "foodchain.details.v1",
};

/** Orders kept in "my orders" (oldest forgotten first). */
export const MAX_ORDERS = 50;

const ID = /^[0-9a-f]{24}$/;
const TOKEN = /^[A-Za-z0-9_-]{43}$/;

function read(storage, key) {
  try {
    const raw = storage.getItem(key);
    return raw === null ? null : JSON.parse(raw);
  } catch {
    return null;
  }
}

function write(storage, key, value) {
  try {
    if (value === null || value === undefined) storage.removeItem(key);
    else storage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false; // full, or storage disabled: the app still works for this page
  }
}

const isText = (v, max) => typeof v === "string" && v.length <= max;
const isCount = (v, max) => Number.isInteger(v) && v >= 1 && v <= max;

/** The cart's lines: `[{item_id, quantity, name, price_cents}]`. */
export function loadCart() {
  const lines = read(localStorage, KEYS.cart);
  if (!Array.isArray(lines)) return [];
  const seen = new Set();
  return lines.filter((l) => {
    const ok = l && ID.test(l.item_id) && isCount(l.quantity, 999) && !seen.has(l.item_id)
      && isText(l.name, 200) && Number.isInteger(l.price_cents);
    if (ok) seen.add(l.item_id);
    return ok;
  });
}

export function saveCart(lines) {
  write(localStorage, KEYS.cart, lines.length ? lines : null);
}

/** "My orders", newest first: `[{id, token, created_at, total_cents, summary, status}]`. */
export function loadOrders() {
  const orders = read(localStorage, KEYS.orders);
  if (!Array.isArray(orders)) return [];
  return orders.filter((o) => o && ID.test(o.id) && TOKEN.test(o.token));
}

function saveOrders(orders) {
  write(localStorage, KEYS.orders, orders.slice(0, MAX_ORDERS));
}

export function findOrder(id) {
  return loadOrders().find((o) => o.id === id) ?? null;
}

/** Adds an order, or updates what is known of it. */
export function rememberOrder(order) {
  const orders = loadOrders();
  const i = orders.findIndex((o) => o.id === order.id);
  if (i >= 0) orders[i] = { ...orders[i], ...order };
  else orders.unshift(order);
  saveOrders(orders);
}

export function forgetOrder(id) {
  saveOrders(loadOrders().filter((o) => o.id !== id));
}

/** The checkout attempt in progress: `{key, body, started_at}`, or null. */
export function loadAttempt() {
  const a = read(localStorage, KEYS.attempt);
  return a && typeof a.key === "string" && a.body && typeof a.body === "object" ? a : null;
}

export function saveAttempt(attempt) {
  return write(localStorage, KEYS.attempt, attempt);
}

export function clearAttempt() {
  write(localStorage, KEYS.attempt, null);
}

/** The checkout form as typed in this tab. */
export function loadDetails() {
  const d = read(sessionStorage, KEYS.details);
  return d && typeof d === "object" ? d : {};
}

export function saveDetails(details) {
  write(sessionStorage, KEYS.details, details);
}

/** Calls `fn(what)` when another tab changes the cart or "my orders". */
export function onOtherTab(fn) {
  window.addEventListener("storage", (e) => {
    if (e.key === KEYS.cart) fn("cart");
    else if (e.key === KEYS.orders) fn("orders");
    else if (e.key === KEYS.attempt) fn("attempt");
  });
}

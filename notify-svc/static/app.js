// The customer app: menu and cart at `/`, "my orders" at `/orders`, the live
// tracker at `/track/<id>#token=<token>`. One page; the browser routes.
import { getMenu, newKey, NetworkError } from "./api.js";
import { Cart, lineProblem, renderLines } from "./cart.js";
import {
  clearFieldError, fillDetails, orderBody, readDetails, runAttempt, showFieldErrors, splitFields, validate,
} from "./checkout.js";
import { byId } from "./dom.js";
import { renderMenu } from "./menu.js";
import { money } from "./money.js";
import { renderOrders, summary } from "./orders.js";
import {
  clearAttempt, findOrder, forgetOrder, loadAttempt, loadCart, loadDetails, loadOrders, onOtherTab, rememberOrder,
  saveAttempt, saveCart, saveDetails,
} from "./store.js";
import { Tracker } from "./tracker.js";

/** The menu is read again when the page is shown after this long. */
const MENU_STALE_MS = 30000;

const state = {
  /** The menu as order-svc last showed it (null until loaded). */
  menu: null,
  menuById: new Map(),
  menuAt: 0,
  /** The checkout attempt not yet answered (see checkout.js), or null. */
  attempt: loadAttempt(),
  /** Whether this page is running that attempt right now. */
  running: false,
  /** Messages order-svc gave about cart lines, by item id. */
  lineErrors: new Map(),
  /** The menu request in flight, if any. */
  menuLoading: null,
  /** The open tracker, if any. */
  tracker: null,
  view: null,
};

const form = byId("checkout");
const cart = new Cart(loadCart(), (id) => {
  if (id) state.lineErrors.delete(id);
  byId("cart-error").textContent = "";
  saveCart(cart.lines);
  drawCart();
  drawMenu();
});

// ---- views -------------------------------------------------------------

const VIEWS = { shop: "view-shop", track: "view-track", orders: "view-orders" };
const TITLES = { shop: "menu-title", track: "track-title", orders: "orders-title" };

function show(view, { focus }) {
  for (const [name, id] of Object.entries(VIEWS)) byId(id).hidden = name !== view;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = {
    shop: "foodchain · order food",
    track: "foodchain · your order",
    orders: "foodchain · my orders",
  }[view];
  if (view !== "track" && state.tracker) {
    state.tracker.stop();
    state.tracker = null;
  }
  state.view = view;
  // After an in-page navigation, focus goes to the new view's heading, as
  // it would on a page load (screen readers announce it).
  if (focus) byId(TITLES[view]).focus();
}

function route({ focus = true } = {}) {
  const track = location.pathname.match(/^\/track\/([0-9a-fA-F]{24})\/?$/);
  if (track) {
    const id = track[1].toLowerCase();
    const fromLink = location.hash.match(/^#token=([A-Za-z0-9_-]{43})$/)?.[1];
    openTracker(id, fromLink ?? findOrder(id)?.token ?? null, focus);
  } else if (location.pathname === "/orders") {
    show("orders", { focus });
    drawOrders();
  } else {
    show("shop", { focus });
    if (Date.now() - state.menuAt > MENU_STALE_MS) loadMenu();
  }
}

function navigate(url) {
  history.pushState(null, "", url);
  route();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest?.("a[data-link]");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  const url = new URL(a.href);
  if (url.pathname + url.hash !== location.pathname + location.hash) navigate(url.pathname + url.hash);
  else byId(TITLES[state.view]).focus();
});
window.addEventListener("popstate", () => route());
// The skip link moves focus without touching the URL (whose fragment may
// hold a tracking token).
document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault();
  byId("main").focus();
});

// ---- menu --------------------------------------------------------------

/** Reads the menu (once at a time). */
function loadMenu() {
  state.menuLoading ??= fetchMenu().finally(() => { state.menuLoading = null; });
  return state.menuLoading;
}

async function fetchMenu() {
  const status = byId("menu-status");
  if (!state.menu) status.textContent = "Loading the menu…";
  let answer = null;
  try {
    answer = await getMenu();
  } catch (e) {
    if (!(e instanceof NetworkError)) throw e;
  }
  if (!answer?.ok || !Array.isArray(answer.body)) {
    if (!state.menu) {
      status.textContent = "The menu could not be loaded. Retrying…";
      setTimeout(loadMenu, 3000);
    }
    return;
  }
  const first = !state.menu;
  state.menu = answer.body;
  state.menuById = new Map(state.menu.map((i) => [i.id, i]));
  state.menuAt = Date.now();
  status.textContent = state.menu.length ? "" : "Nothing on the menu right now.";
  if (!state.attempt) {
    cart.refresh(state.menuById);
    saveCart(cart.lines);
  }
  drawMenu();
  drawCart();
  // For the benchmark and for anyone profiling: when the menu first shows.
  if (first) performance.mark("menu-shown");
}

function drawMenu() {
  if (!state.menu) return;
  renderMenu(byId("menu-list"), state.menu, cart, (id) => {
    const item = state.menuById.get(id);
    if (item && !state.attempt) cart.add(item);
  });
  if (state.attempt) for (const b of byId("menu-list").querySelectorAll("button.add")) b.disabled = true;
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && state.view === "shop" && Date.now() - state.menuAt > MENU_STALE_MS) {
    loadMenu();
  }
});

// ---- cart --------------------------------------------------------------

function drawCart() {
  const locked = Boolean(state.attempt);
  const empty = cart.lines.length === 0;
  byId("cart").classList.toggle("locked", locked);
  byId("cart-empty").hidden = !empty;
  renderLines(byId("cart-lines"), cart, {
    menuById: state.menuById,
    menuLoaded: Boolean(state.menu),
    locked,
    errors: state.lineErrors,
    act(what, id) {
      if (state.attempt) return;
      const item = state.menuById.get(id);
      if (what === "inc") cart.step(id, 1, item);
      else if (what === "dec") cart.step(id, -1, item);
      else {
        const li = byId("cart-lines").querySelector(`li[data-item="${id}"]`);
        const next = li?.nextElementSibling ?? li?.previousElementSibling;
        cart.remove(id);
        // The pressed button is gone: keep keyboard focus in the cart.
        (next?.querySelector(".remove") ?? byId("cart-title")).focus();
      }
    },
  });
  const total = money(cart.total());
  byId("cart-total").textContent = empty ? "–" : total;
  const button = byId("place-order");
  if (!state.running) button.textContent = empty ? "Place order" : `Place order · ${total}`;
  const bar = byId("cart-bar");
  bar.hidden = empty || state.view !== "shop";
  byId("cart-bar-text").textContent = `View cart · ${cart.count()} ${cart.count() === 1 ? "item" : "items"} · ${total}`;
}

byId("cart-bar").addEventListener("click", (e) => {
  e.preventDefault();
  byId("cart").scrollIntoView({ block: "start" });
  byId("cart-title").focus({ preventScroll: true });
});

// ---- checkout ----------------------------------------------------------

fillDetails(form, loadDetails());
form.addEventListener("input", (e) => {
  clearFieldError(e.target);
  saveDetails(readDetails(form));
});
form.addEventListener("submit", (e) => {
  e.preventDefault();
  checkout();
});
byId("checkout-retry").addEventListener("click", () => runStoredAttempt());
byId("checkout-discard").addEventListener("click", () => {
  clearAttempt();
  state.attempt = null;
  setCheckoutStatus("");
  unlock();
  byId("name").focus();
});

function setCheckoutStatus(text) {
  byId("checkout-status").textContent = text;
}

/** "Place order": validate, store the attempt (key + body), then POST. */
function checkout() {
  // A second click or Enter while the first is in flight does nothing; a
  // stored attempt is resumed as it is (same key, same body).
  if (state.running) return;
  if (state.attempt) {
    runStoredAttempt();
    return;
  }
  byId("checkout-error").textContent = "";
  byId("cart-error").textContent = "";
  state.lineErrors.clear();
  if (cart.lines.length === 0) {
    byId("cart-error").textContent = "Your cart is empty: add something from the menu first.";
    byId("cart-title").focus();
    return;
  }
  const errors = validate(form);
  const first = showFieldErrors(form, errors);
  const unavailable = cart.lines.filter((l) => lineProblem(l, state.menuById, Boolean(state.menu)));
  drawCart();
  if (first) {
    first.focus();
    return;
  }
  if (unavailable.length) {
    byId("cart-error").textContent = "Some items cannot be ordered as they are: see the cart.";
    byId("cart-lines").querySelector(`li[data-item="${unavailable[0].item_id}"] button:not(:disabled)`)?.focus();
    return;
  }
  const attempt = { key: newKey(), body: orderBody(readDetails(form), cart.lines), started_at: new Date().toISOString() };
  // Stored before the POST: a reload while it is in flight resumes it.
  saveAttempt(attempt);
  state.attempt = attempt;
  runStoredAttempt();
}

function lock() {
  byId("details").disabled = true;
  const button = byId("place-order");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = "Placing your order…";
  byId("checkout-retry").hidden = true;
  byId("checkout-discard").hidden = true;
  drawCart();
  drawMenu();
}

function unlock() {
  byId("details").disabled = false;
  const button = byId("place-order");
  button.disabled = false;
  button.removeAttribute("aria-busy");
  byId("checkout-retry").hidden = true;
  byId("checkout-discard").hidden = true;
  drawCart();
  drawMenu();
}

const WAITING = {
  offline: "You are offline. Your order will be sent when the connection is back.",
  network: "Could not reach the kitchen. Trying again",
  server: "The kitchen is busy. Trying again",
  busy: "Too many orders at once. Trying again",
};

async function runStoredAttempt() {
  if (state.running || !state.attempt) return;
  state.running = true;
  const attempt = state.attempt;
  lock();
  setCheckoutStatus("Placing your order…");
  const outcome = await runAttempt(attempt, {
    waiting: ({ why, seconds }) => setCheckoutStatus(
      why === "offline" ? WAITING.offline : `${WAITING[why]} in ${Math.max(1, Math.round(seconds))} s (your order will not be placed twice).`),
  });
  state.running = false;
  if (outcome.kind === "placed") placed(outcome.order);
  else if (outcome.kind === "refused") {
    clearAttempt();
    state.attempt = null;
    setCheckoutStatus("");
    unlock();
    refused(outcome, attempt.body);
  } else if (outcome.kind === "gave-up") {
    const button = byId("place-order");
    button.removeAttribute("aria-busy");
    button.textContent = "Not placed yet";
    byId("checkout-retry").hidden = false;
    byId("checkout-discard").hidden = false;
    setCheckoutStatus("We could not reach the kitchen. Try again: if the order did arrive, you get that same order, never a second one.");
    byId("checkout-retry").focus();
  }
}

function placed(order) {
  rememberOrder({
    id: order.id,
    token: order.tracking_token,
    created_at: order.created_at,
    total_cents: order.total_cents,
    summary: summary(order),
    status: order.status,
  });
  clearAttempt();
  state.attempt = null;
  cart.clear();
  setCheckoutStatus("");
  unlock();
  drawOrdersCount();
  state.menuAt = 0; // stock changed: read the menu again when it is shown
  navigate(`/track/${order.id}#token=${order.tracking_token}`);
}

/** A 4xx: the messages go next to what they are about; the cart is kept. */
function refused(outcome, body) {
  const b = outcome.body ?? {};
  const split = splitFields(b.fields, body);
  state.lineErrors = split.lines;
  const first = showFieldErrors(form, split.fields);
  drawCart();
  const top = byId("checkout-error");
  if (outcome.status === 409 && b.error === "insufficient_stock") {
    // The message names the dishes; the menu shows what is left.
    top.textContent = `${sentence(b.message)}. Your cart is kept: lower the quantity or remove the dish.`;
    loadMenu();
  } else if (outcome.status === 404 && b.error === "item_not_found") {
    top.textContent = `${sentence(b.message)}. Your cart is kept: remove the dish to order.`;
    loadMenu();
  } else if (outcome.status === 422 && b.error === "validation_failed") {
    top.textContent = split.other.length ? split.other.join(" ") : "Please check the highlighted fields.";
  } else {
    top.textContent = b.message ? `The order was not accepted: ${b.message}` : `The order was not accepted (${outcome.status}).`;
  }
  if (first) first.focus();
  else {
    const line = byId("cart-lines").querySelector("li.invalid button:not(:disabled)");
    (line ?? byId("place-order")).focus();
  }
}

const sentence = (s) => (s ? s[0].toUpperCase() + s.slice(1) : "");

// ---- tracker and my orders ---------------------------------------------

function openTracker(id, token, focus) {
  show("track", { focus });
  if (state.tracker?.id === id && state.tracker.token === token) return;
  state.tracker?.stop();
  state.tracker = null;
  if (!token) {
    byId("track-id").textContent = id;
    byId("steps").replaceChildren();
    const conn = byId("conn");
    conn.dataset.state = "invalid";
    conn.textContent = "No tracking token";
    byId("track-headline").textContent =
      "This link has no tracking token. Open the whole tracking link, or the order from My orders on the device it was placed from.";
    byId("cancel-box").hidden = true;
    byId("track-summary").hidden = true;
    return;
  }
  const tracker = new Tracker(id, token, {
    changed: (status) => {
      if (findOrder(id)) rememberOrder({ id, status });
    },
    found: (order) => {
      rememberOrder({
        id,
        token,
        created_at: order.created_at,
        total_cents: order.total_cents,
        summary: summary(order),
        status: order.status,
      });
      drawOrdersCount();
    },
  });
  state.tracker = tracker;
  tracker.start();
}

function drawOrders() {
  renderOrders(byId("orders-list"), byId("orders-empty"), loadOrders(), (id) => {
    forgetOrder(id);
    drawOrders();
    drawOrdersCount();
    byId("orders-title").focus();
  });
}

function drawOrdersCount() {
  const n = loadOrders().length;
  byId("orders-count").textContent = n ? String(n) : "";
}

// ---- other tabs ----------------------------------------------------------

onOtherTab((what) => {
  if (what === "cart" && !state.attempt) {
    cart.lines = loadCart();
    drawCart();
    drawMenu();
  } else if (what === "orders") {
    drawOrdersCount();
    if (state.view === "orders") drawOrders();
  }
});

// ---- start -------------------------------------------------------------

drawOrdersCount();
drawCart();
route({ focus: false });
loadMenu();
if (state.attempt) {
  // A reload (or a closed tab) while an order was being placed: finish it
  // with the same key and body.
  fillDetails(form, state.attempt.body.customer);
  runStoredAttempt();
}

// The operator console: read-only, refreshed live from order-svc's
// `GET /api/v1/admin/overview` (the same JSON scripts use). The admin token
// is typed by the operator and kept in sessionStorage: for this tab only,
// gone when it closes, and never in a URL.
import { adminOverview, NetworkError, sleep } from "./api.js";
import { byId, dateTime, h, timeOfDay } from "./dom.js";

const TOKEN_KEY = "foodchain.admin-token";

/** Refresh period while the tab is visible, and while it is hidden. */
const POLL_MS = 2000;
const HIDDEN_POLL_MS = 15000;

/** Stock at or under which an item is flagged. */
const LOW_STOCK = 10;

let token = sessionStorage.getItem(TOKEN_KEY);
let loop = null;

function showLogin(message) {
  byId("console").hidden = true;
  byId("signout").hidden = true;
  byId("login").hidden = false;
  byId("login-error").textContent = message ?? "";
  byId("admin-token").value = "";
  byId("admin-token").focus();
}

function showConsole() {
  byId("login").hidden = true;
  byId("console").hidden = false;
  byId("signout").hidden = false;
}

function signOut(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  loop?.abort();
  loop = null;
  showLogin(message);
}

byId("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const given = byId("admin-token").value.trim();
  if (!given) {
    byId("login-error").textContent = "Enter the admin token.";
    return;
  }
  byId("login-error").textContent = "";
  let answer;
  try {
    answer = await adminOverview(given);
  } catch (err) {
    if (!(err instanceof NetworkError)) throw err;
    byId("login-error").textContent = "order-svc cannot be reached. Try again.";
    return;
  }
  if (answer.status === 401) {
    byId("login-error").textContent = "That token was refused.";
    byId("admin-token").select();
    return;
  }
  token = given;
  sessionStorage.setItem(TOKEN_KEY, token);
  showConsole();
  if (answer.ok) draw(answer.body);
  byId("console-title").focus();
  start();
});

document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault();
  byId("main").focus();
});

byId("signout").addEventListener("click", () => signOut("Signed out."));

function setRefresh(state, text) {
  const el = byId("refresh");
  el.dataset.state = state;
  el.textContent = text;
}

function start() {
  loop?.abort();
  const ctl = new AbortController();
  loop = ctl;
  poll(ctl.signal);
}

async function poll(signal) {
  while (!signal.aborted) {
    let answer = null;
    try {
      answer = await adminOverview(token, signal);
    } catch (e) {
      if (!(e instanceof NetworkError)) throw e;
    }
    if (signal.aborted) return;
    if (answer?.status === 401) {
      signOut("The admin token was refused: enter it again.");
      return;
    }
    if (answer?.ok) {
      draw(answer.body);
      setRefresh("live", `Live · updated ${timeOfDay(answer.body.generated_at)}`);
    } else {
      setRefresh("reconnecting", answer
        ? `order-svc answered ${answer.status}; retrying…`
        : "order-svc cannot be reached; retrying…");
    }
    await sleep(document.hidden ? HIDDEN_POLL_MS : POLL_MS, signal);
  }
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && token) start();
});

const cell = (text, cls) => h("td", { class: cls, text: String(text ?? "") });
const num = (n) => cell(n === null || n === undefined ? "–" : n.toLocaleString(), "num");

function card(label, value, alert) {
  return h("div", { class: alert ? "card alert" : "card" },
    h("div", { class: "muted", text: label }),
    h("div", { class: "value", text: value.toLocaleString() }));
}

function rows(table, list, empty, columns) {
  const body = byId(table).tBodies[0];
  body.replaceChildren(...(list.length ? list : [null]).map((x) => {
    if (x === null) return h("tr", {}, h("td", { colspan: columns, class: "muted", text: empty }));
    return x;
  }));
}

function draw(o) {
  const groups = o.streams.flatMap((s) => s.groups);
  const lag = groups.reduce((n, g) => n + (g.lag ?? 0), 0);
  const pending = groups.reduce((n, g) => n + g.pending, 0);
  const lastHour = Object.values(o.orders_last_hour).reduce((n, c) => n + c, 0);
  const low = o.stock.filter((s) => s.stock <= LOW_STOCK).length;
  byId("cards").replaceChildren(
    card("Dead letters", o.dead_letters.total, o.dead_letters.total > 0),
    card("Orders, last hour", lastHour),
    card("Consumer lag", lag, lag > 100),
    card("Pending", pending, pending > 100),
    card("Items low on stock", low, low > 0));

  rows("streams", o.streams.flatMap((s) => {
    const groupsOf = s.groups.length ? s.groups : [null];
    return groupsOf.map((g, i) => h("tr", { dataset: { stream: s.name, group: g?.name ?? "" } },
      i === 0 ? h("th", { scope: "row", rowspan: groupsOf.length, text: s.name }) : null,
      i === 0 ? h("td", { class: "num", rowspan: groupsOf.length, text: s.length.toLocaleString() }) : null,
      cell(g?.name ?? "no consumer group"),
      g ? num(g.lag) : cell(""),
      g ? num(g.pending) : cell(""),
      g ? num(g.consumers) : cell("")));
  }), "No streams yet.", 6);

  byId("dead-total").textContent = o.dead_letters.total ? String(o.dead_letters.total) : "";
  byId("dead-examined").textContent = o.dead_letters.examined < o.dead_letters.total
    ? `(of the latest ${o.dead_letters.examined})` : "";
  rows("dead-by", o.dead_letters.by.map((d) => h("tr", {},
    cell(d.stream), cell(d.group), cell(d.reason), num(d.count))), "No dead letters.", 4);
  rows("dead-latest", o.dead_letters.latest.map((d) => h("tr", { dataset: { id: d.id } },
    cell(dateTime(d.at)), h("td", {}, h("code", { text: d.id })), cell(d.stream), cell(d.group), cell(d.reason),
    cell(d.event_type ?? "–"), cell(d.error, "error-text"))), "No dead letters.", 7);

  rows("stock", o.stock.map((s) => h("tr", {
    class: s.stock <= 0 ? "bad" : s.stock <= LOW_STOCK ? "warn" : "", dataset: { item: s.id },
  }, cell(s.name), num(s.stock))), "No menu items.", 2);

  rows("recent", Object.entries(o.orders_last_hour).map(([status, n]) => h("tr", { dataset: { status } },
    cell(status.replaceAll("_", " ")), num(n))), "No orders in the last hour.", 2);
}

if (token) {
  showConsole();
  setRefresh("connecting", "Loading…");
  start();
} else {
  showLogin();
}

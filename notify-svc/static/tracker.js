// The live tracker of one order: notify-svc's WebSocket (protocol in
// notify-svc/src/ws.rs), a stepper from "placed" to "delivered" with the
// time of each step, the connection's state, and cancelling.
//
// The socket offers the subprotocols `foodchain.v1` and `bearer.<token>`
// (a browser cannot set headers on a WebSocket; a protocol, unlike a query
// string, is in no URL and no log). It gets a snapshot, then one update per
// new step, in order. It reconnects with capped, jittered exponential
// backoff, and every reconnect starts from a fresh snapshot, so no step is
// missed or shown twice. A terminal step (delivered, cancelled, rejected)
// closes the socket: nothing more will happen.
//
// A snapshot can be behind: a notify-svc replica that has just restarted
// serves what its consumer group has stored so far, and its live tail only
// sees what is published from its start on, so steps taken while it was
// down may reach the page only through a later snapshot. So while the page
// is live and nothing arrives, it asks order-svc now and then (3 s after a
// snapshot, then less and less often) whether the order is further along,
// and if so reconnects for a fresh snapshot.
import { cancelOrder, getOrder, newKey, NetworkError, sleep } from "./api.js";
import { byId, h, say, timeOfDay } from "./dom.js";
import { money } from "./money.js";
import { CANCELLABLE, EXITS, FLOW, TERMINAL, headline, human, stepOf } from "./steps.js";

/** Reconnect delays: 250 ms doubling up to this, with jitter (the first
 * tries for an order never seen live: 100 to 200 ms). */
const MAX_BACKOFF_MS = 8000;

/** Failed connections before the link itself is checked over REST. */
const CHECK_LINK_AFTER = 3;

/** First and longest wait before asking order-svc whether the socket is behind. */
const STALE_CHECK_FIRST_MS = 3000;
const STALE_CHECK_MAX_MS = 60000;

/** Order statuses in the order they are reached (exits last). */
const RANK = { created: 0, confirmed: 1, preparing: 2, out_for_delivery: 3, delivered: 4, cancelled: 4, rejected: 4 };

const CONN_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Connection lost: reconnecting…",
  offline: "Offline: waiting for the network…",
  done: "Done: this order is finished",
  invalid: "Not found",
};

export class Tracker {
  /**
   * `id`, `token`: the order and its tracking token. `changed(status)` is
   * told every new status (for "my orders"); `found(order)` gets the order
   * as order-svc shows it.
   */
  constructor(id, token, { changed, found }) {
    Object.assign(this, { id, token, changed, found });
    this.entries = new Map(); // step → entry
    this.status = null;
    this.delivery = null;
    this.failures = 0;
    this.everLive = false;
    this.finished = false;
    this.stopped = false;
    this.socket = null;
    this.timer = null;
    this.staleTimer = null;
    this.staleDelay = STALE_CHECK_FIRST_MS;
    this.cancelKey = null;
    this.items = new Map(); // step → <li>
    this.online = () => {
      if (this.conn === "offline" || this.conn === "reconnecting") this.connectNow();
    };
  }

  start() {
    byId("track-id").textContent = this.id;
    byId("steps").replaceChildren();
    say(byId("track-reason"), "");
    byId("track-summary").hidden = true;
    byId("cancel-status").textContent = "";
    this.render();
    this.wireCancel();
    window.addEventListener("online", this.online);
    this.fetchOrder();
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.staleTimer);
    window.removeEventListener("online", this.online);
    this.unwire?.();
    const s = this.socket;
    this.socket = null;
    if (s && s.readyState <= WebSocket.OPEN) s.close(1000, "leaving");
  }

  setConn(state) {
    this.conn = state;
    const el = byId("conn");
    el.dataset.state = state;
    el.textContent = CONN_TEXT[state];
  }

  connect() {
    if (this.stopped || this.finished) return;
    clearTimeout(this.timer);
    if (navigator.onLine === false) {
      this.setConn("offline");
      return;
    }
    this.setConn(this.everLive ? "reconnecting" : "connecting");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/orders/${this.id}`,
      ["foodchain.v1", `bearer.${this.token}`]);
    this.socket = socket;
    socket.onmessage = (ev) => {
      if (this.socket !== socket) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.receive(msg);
    };
    socket.onclose = (ev) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.stopped || this.finished) return;
      if (ev.code === 1000 && ev.reason === "order finished") {
        this.finish();
        return;
      }
      this.retry();
    };
  }

  /** Asks order-svc, after a quiet while, whether the socket is behind. */
  scheduleStaleCheck() {
    clearTimeout(this.staleTimer);
    this.staleTimer = setTimeout(() => this.checkStale(), this.staleDelay);
  }

  async checkStale() {
    if (this.stopped || this.finished || this.conn !== "live") return;
    let answer = null;
    try {
      answer = await getOrder(this.id, this.token);
    } catch (e) {
      if (!(e instanceof NetworkError)) throw e;
    }
    if (this.stopped || this.finished || this.conn !== "live") return;
    const behind = answer?.ok && (RANK[answer.body?.status] ?? -1) > (RANK[this.status] ?? -1);
    if (behind) {
      // A fresh snapshot has what the socket missed.
      const s = this.socket;
      this.socket = null;
      s?.close(1000, "stale");
      this.connectNow();
      return;
    }
    this.staleDelay = Math.min(STALE_CHECK_MAX_MS, this.staleDelay * 2);
    this.scheduleStaleCheck();
  }

  connectNow() {
    this.failures = 0;
    this.connect();
  }

  retry() {
    this.failures += 1;
    if (navigator.onLine === false) {
      this.setConn("offline");
      return;
    }
    this.setConn(this.everLive ? "reconnecting" : "connecting");
    // A brand-new order may not have reached notify-svc yet (the first
    // tries are refused for a few ms); a wrong link is refused forever.
    if (!this.everLive && this.failures === CHECK_LINK_AFTER) this.fetchOrder();
    const base = !this.everLive && this.failures <= CHECK_LINK_AFTER
      ? 200
      : Math.min(MAX_BACKOFF_MS, 250 * 2 ** Math.min(this.failures - 1, 8));
    this.timer = setTimeout(() => this.connect(), base / 2 + Math.random() * (base / 2));
  }

  receive(msg) {
    if (msg.type === "snapshot") {
      this.failures = 0;
      this.everLive = true;
      this.setConn("live");
      this.learn(msg.timeline ?? [], false);
      this.staleDelay = STALE_CHECK_FIRST_MS;
    } else if (msg.type === "update" && msg.entry) {
      this.learn([msg.entry], true);
    } else return;
    this.scheduleStaleCheck();
    if (msg.status) this.setStatus(msg.status);
    this.delivery = msg.delivery ?? this.delivery;
    this.render();
    if (TERMINAL.has(this.status)) this.finish();
  }

  learn(entries, live) {
    for (const e of entries) {
      const step = stepOf(e);
      if (this.entries.has(step)) continue;
      this.entries.set(step, { ...e, live });
    }
  }

  setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.changed?.(status);
  }

  finish() {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.timer);
    clearTimeout(this.staleTimer);
    const s = this.socket;
    this.socket = null;
    if (s && s.readyState <= WebSocket.OPEN) s.close(1000, "finished");
    this.setConn("done");
    this.render();
    if (this.status === "cancelled" || this.status === "rejected") this.fetchOrder();
  }

  /** The order over REST: its lines and total, its reason, and whether the link is right at all. */
  async fetchOrder() {
    let answer;
    try {
      answer = await getOrder(this.id, this.token);
    } catch (e) {
      if (e instanceof NetworkError) return;
      throw e;
    }
    if (this.stopped) return;
    if (answer.status === 404 && !this.everLive) {
      this.stopped = true;
      clearTimeout(this.timer);
      this.socket?.close();
      this.setConn("invalid");
      byId("track-headline").textContent =
        "We cannot find this order. Check the tracking link: it must be the whole link you were given.";
      byId("cancel-box").hidden = true;
      return;
    }
    if (!answer.ok || !answer.body) return;
    const order = answer.body;
    this.found?.(order);
    if (!this.everLive && order.status) {
      this.setStatus(order.status);
      this.render();
    }
    if (order.reason && (order.status === "cancelled" || order.status === "rejected")) {
      say(byId("track-reason"), order.status === "cancelled"
        ? `Reason given: ${order.reason}`
        : `The kitchen said: ${order.reason}`);
    }
    const lines = byId("summary-lines");
    lines.replaceChildren(...(order.items ?? []).map((l) =>
      h("li", { class: "line" },
        h("span", { class: "name", text: `${l.quantity} × ${l.name}` }),
        h("span", { class: "sum", text: money(l.line_total_cents) }))));
    byId("summary-total").textContent = money(order.total_cents);
    byId("track-summary").hidden = false;
  }

  /** The stepper: every step of the flow, or the steps reached and the exit. */
  render() {
    const exit = [...this.entries.keys()].find((s) => EXITS.has(s));
    let steps = FLOW;
    if (exit) {
      const reached = FLOW.filter(([s]) => this.entries.has(s));
      steps = [...reached, [exit, EXITS.get(exit)]];
    }
    const list = byId("steps");
    const wanted = new Set(steps.map(([s]) => s));
    for (const [step, li] of this.items) {
      if (!wanted.has(step)) {
        li.remove();
        this.items.delete(step);
      }
    }
    let next = !this.finished;
    let previous = null;
    for (const [step, label] of steps) {
      let li = this.items.get(step);
      if (!li) {
        li = h("li", { dataset: { step, state: "todo" } },
          h("span", { class: "dot", "aria-hidden": "true" }),
          h("span", { class: "label" }, label, h("span", { class: "sr-only state" })),
          h("time"));
        this.items.set(step, li);
        if (previous) previous.after(li);
        else list.prepend(li);
      }
      previous = li;
      const entry = this.entries.get(step);
      let state = "todo";
      if (entry) state = EXITS.has(step) ? "exit" : "done";
      else if (next) {
        state = "current";
        next = false;
      }
      const time = li.querySelector("time");
      let arrived = false;
      if (entry) {
        time.dateTime = entry.at;
        time.textContent = timeOfDay(entry.at);
        if (entry.live && !li.dataset.live) {
          li.dataset.live = "1";
          li.classList.add("fresh");
          arrived = true;
        }
      }
      li.querySelector(".state").textContent =
        state === "done" || state === "exit" ? `, at ${timeOfDay(entry.at)}` : state === "current" ? ", next" : "";
      if (state === "current") li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
      if (li.dataset.state !== state) li.dataset.state = state;
      // When a live step reached the page (User Timing, for profiling and
      // the page benchmark).
      if (arrived) performance.mark(`foodchain:step ${step}`);
    }
    if (this.conn !== "invalid") byId("track-headline").textContent = headline(this.status, this.delivery);
    const cancellable = !this.finished && CANCELLABLE.has(this.status);
    byId("cancel-box").hidden = !cancellable && !byId("cancel-status").textContent;
    byId("cancel-open").hidden = !cancellable || !byId("cancel-form").hidden;
    if (!cancellable) byId("cancel-form").hidden = true;
  }

  wireCancel() {
    const open = byId("cancel-open");
    const form = byId("cancel-form");
    const keep = byId("cancel-keep");
    const onOpen = () => {
      form.hidden = false;
      open.hidden = true;
      byId("cancel-reason").focus();
    };
    const onKeep = () => {
      form.hidden = true;
      open.hidden = false;
      open.focus();
    };
    const onSubmit = (e) => {
      e.preventDefault();
      this.cancel();
    };
    open.addEventListener("click", onOpen);
    keep.addEventListener("click", onKeep);
    form.addEventListener("submit", onSubmit);
    form.hidden = true;
    this.unwire = () => {
      open.removeEventListener("click", onOpen);
      keep.removeEventListener("click", onKeep);
      form.removeEventListener("submit", onSubmit);
    };
  }

  /** Cancels the order: one Idempotency-Key per cancel, kept across retries. */
  async cancel() {
    const confirm = byId("cancel-confirm");
    const status = byId("cancel-status");
    if (confirm.disabled) return;
    confirm.disabled = true;
    confirm.setAttribute("aria-busy", "true");
    status.textContent = "Cancelling…";
    this.cancelKey ??= newKey();
    const reason = byId("cancel-reason").value.trim();
    let answer = null;
    for (let attempt = 0; attempt < 4 && !this.stopped; attempt++) {
      try {
        answer = await cancelOrder(this.id, this.token, reason, this.cancelKey);
        if (answer.status < 500) break;
      } catch (e) {
        if (!(e instanceof NetworkError)) throw e;
      }
      await sleep(500 * 2 ** attempt);
    }
    confirm.disabled = false;
    confirm.removeAttribute("aria-busy");
    if (this.stopped) return;
    if (answer?.status === 200) {
      status.textContent = "Your order is cancelled.";
      byId("cancel-form").hidden = true;
      if (answer.body?.status) this.setStatus(answer.body.status);
      if (answer.body?.reason) say(byId("track-reason"), `Reason given: ${answer.body.reason}`);
      this.render();
      byId("track-title").focus();
    } else if (answer?.status === 409 && answer.body?.error === "not_cancellable") {
      status.textContent = `Too late to cancel: the order is ${human(answer.body.status)}.`;
      byId("cancel-form").hidden = true;
      this.render();
    } else {
      status.textContent = answer?.body?.message
        ? `Could not cancel: ${answer.body.message}`
        : "Could not reach the kitchen to cancel. Try again.";
    }
  }
}

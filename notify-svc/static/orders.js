// "My orders": the orders placed from (or opened in) this browser.
import { h, dateTime } from "./dom.js";
import { money } from "./money.js";
import { human, TERMINAL } from "./steps.js";

/** Draws the list; `forget(id)` removes one. */
export function renderOrders(list, empty, orders, forget) {
  empty.hidden = orders.length > 0;
  list.replaceChildren(...orders.map((o) => {
    const href = `/track/${o.id}#token=${o.token}`;
    return h("li", { dataset: { order: o.id } },
      h("div", {},
        h("div", { class: "what", text: o.summary || `Order ${o.id}` }),
        h("div", { class: "when" },
          o.created_at ? dateTime(o.created_at) : "",
          o.total_cents != null ? ` · ${money(o.total_cents)}` : "")),
      h("div", { class: "row-actions" },
        h("span", { class: "status", text: o.status ? human(o.status) : "" }),
        h("a", { href, "data-link": true, class: "button-like", "aria-label": `${TERMINAL.has(o.status) ? "Open" : "Track"} order ${o.summary || o.id}` },
          TERMINAL.has(o.status) ? "Open" : "Track"),
        h("button", { type: "button", class: "link", "aria-label": `Forget order ${o.summary || o.id}`, onclick: () => forget(o.id) }, "Forget")));
  }));
}

/** One line about what an order holds: "2 × Margherita, 1 × Lemonade". */
export const summary = (order) => (order.items ?? []).map((l) => `${l.quantity} × ${l.name}`).join(", ");

// The cart: lines of (item, quantity), kept in localStorage, and its view.
import { h } from "./dom.js";
import { money } from "./money.js";

/**
 * Most of one item in one order: order-svc's default MAX_ITEM_QUANTITY. A
 * deployment with a lower limit answers 422 for that line, and the message
 * is shown next to it.
 */
export const MAX_QUANTITY = 20;

export class Cart {
  /** `lines`: `[{item_id, quantity, name, price_cents}]`; `changed()` after every change. */
  constructor(lines, changed) {
    this.lines = lines;
    this.changed = changed;
  }

  quantity(id) {
    return this.lines.find((l) => l.item_id === id)?.quantity ?? 0;
  }

  /** Most of `item` the cart may hold: the stock left, within the order limit. */
  static cap(item) {
    return Math.max(0, Math.min(MAX_QUANTITY, item?.stock ?? MAX_QUANTITY));
  }

  add(item) {
    const line = this.lines.find((l) => l.item_id === item.id);
    if (line) line.quantity = Math.min(line.quantity + 1, Math.max(Cart.cap(item), line.quantity));
    else if (Cart.cap(item) > 0) {
      this.lines.push({ item_id: item.id, quantity: 1, name: item.name, price_cents: item.price_cents });
    }
    this.changed(item.id);
  }

  step(id, delta, item) {
    const line = this.lines.find((l) => l.item_id === id);
    if (!line) return;
    const cap = item ? Cart.cap(item) : MAX_QUANTITY;
    const next = line.quantity + delta;
    if (next < 1) return;
    if (delta > 0 && next > cap) return;
    line.quantity = next;
    this.changed(id);
  }

  remove(id) {
    this.lines = this.lines.filter((l) => l.item_id !== id);
    this.changed(id);
  }

  clear() {
    this.lines = [];
    this.changed(null);
  }

  /** Takes the names and prices of the menu as it is now. */
  refresh(menuById) {
    for (const l of this.lines) {
      const item = menuById.get(l.item_id);
      if (item) Object.assign(l, { name: item.name, price_cents: item.price_cents });
    }
  }

  count() {
    return this.lines.reduce((n, l) => n + l.quantity, 0);
  }

  /** The total in cents, at the prices last seen (order-svc computes the real one). */
  total() {
    return this.lines.reduce((sum, l) => sum + l.price_cents * l.quantity, 0);
  }
}

/** What is wrong with a line given the menu as it is now, if anything. */
export function lineProblem(line, menuById, menuLoaded) {
  if (!menuLoaded) return "";
  const item = menuById.get(line.item_id);
  if (!item) return "No longer on the menu: remove it to order.";
  if (item.stock <= 0) return "Sold out: remove it to order.";
  if (item.stock < line.quantity) return `Only ${item.stock} left.`;
  return "";
}

/**
 * Draws the cart into `list`, reusing the element of each line (by item id)
 * so that the button a keyboard user just pressed keeps its focus.
 */
export function renderLines(list, cart, { menuById, menuLoaded, locked, errors, act }) {
  const keep = new Set(cart.lines.map((l) => l.item_id));
  for (const li of [...list.children]) if (!keep.has(li.dataset.item)) li.remove();
  let previous = null;
  for (const line of cart.lines) {
    let li = list.querySelector(`li[data-item="${line.item_id}"]`);
    if (!li) {
      li = lineElement(line.item_id, act);
      if (previous) previous.after(li);
      else list.prepend(li);
    }
    previous = li;
    const item = menuById.get(line.item_id);
    const name = item?.name ?? line.name;
    li.querySelector(".name").textContent = name;
    li.querySelector(".each").textContent = `${money(item?.price_cents ?? line.price_cents)} each`;
    li.querySelector(".sum").textContent = money((item?.price_cents ?? line.price_cents) * line.quantity);
    li.querySelector(".qty").textContent = String(line.quantity);
    const dec = li.querySelector(".dec");
    const inc = li.querySelector(".inc");
    const remove = li.querySelector(".remove");
    dec.setAttribute("aria-label", `One fewer ${name}`);
    inc.setAttribute("aria-label", `One more ${name}`);
    remove.setAttribute("aria-label", `Remove ${name} from the cart`);
    dec.disabled = locked || line.quantity <= 1;
    inc.disabled = locked || line.quantity >= (item ? Cart.cap(item) : MAX_QUANTITY);
    remove.disabled = locked;
    // What the menu says now comes first; then what order-svc said.
    const problem = lineProblem(line, menuById, menuLoaded) || errors.get(line.item_id) || "";
    const err = li.querySelector(".error");
    err.textContent = problem;
    li.classList.toggle("invalid", Boolean(problem));
  }
}

function lineElement(id, act) {
  const errId = `line-error-${id}`;
  return h("li", { class: "line", dataset: { item: id } },
    h("div", {}, h("span", { class: "name" }), " ", h("span", { class: "each" })),
    h("span", { class: "sum" }),
    h("div", { class: "controls", role: "group", "aria-describedby": errId },
      h("button", { type: "button", class: "icon dec", onclick: () => act("dec", id) }, "−"),
      h("span", { class: "qty", "aria-hidden": "true" }),
      h("button", { type: "button", class: "icon inc", onclick: () => act("inc", id) }, "+"),
      h("button", { type: "button", class: "link remove", onclick: () => act("remove", id) }, "Remove")),
    h("p", { class: "error", id: errId }));
}

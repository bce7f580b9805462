// The menu: grouped by category, with price and stock; sold-out dishes are
// shown but cannot be added.
import { h } from "./dom.js";
import { money } from "./money.js";
import { Cart } from "./cart.js";

/** Stock at or under which "only N left" is shown. */
const LOW_STOCK = 5;

/** Groups items by category, in the API's order (by category, then name). */
function byCategory(items) {
  const groups = new Map();
  for (const item of items) {
    if (!groups.has(item.category)) groups.set(item.category, []);
    groups.get(item.category).push(item);
  }
  return groups;
}

/**
 * Draws the menu into `root`. When the same dishes are drawn again (a
 * refresh), their elements are updated in place, so focus stays put.
 */
export function renderMenu(root, items, cart, add) {
  const ids = items.map((i) => i.id).join();
  if (root.dataset.ids !== ids) {
    const focused = document.activeElement?.closest?.(".dish")?.dataset.item;
    root.replaceChildren(...[...byCategory(items)].map(([category, dishes], n) =>
      h("section", { class: "category", "aria-labelledby": `category-${n}` },
        h("h2", { id: `category-${n}`, text: category }),
        h("ul", { class: "dishes" }, dishes.map((item) => dishElement(item, add))))));
    root.dataset.ids = ids;
    if (focused) root.querySelector(`.dish[data-item="${focused}"] button`)?.focus();
  }
  const byId = new Map(items.map((i) => [i.id, i]));
  for (const li of root.querySelectorAll(".dish")) updateDish(li, byId.get(li.dataset.item), cart);
}

function dishElement(item, add) {
  const id = item.id;
  return h("li", { class: "dish", dataset: { item: id } },
    h("h3", { id: `dish-${id}`, text: item.name }),
    h("p", { class: "desc", text: item.description }),
    h("div", { class: "meta" },
      h("span", { class: "price" }),
      h("span", { class: "stock", id: `stock-${id}` })),
    h("p", { class: "in-cart", "aria-live": "polite" }),
    h("button", {
      type: "button",
      class: "add",
      "aria-describedby": `dish-${id} stock-${id}`,
      onclick: () => add(id),
    }));
}

function updateDish(li, item, cart) {
  if (!item) return;
  const inCart = cart.quantity(item.id);
  const soldOut = item.stock <= 0;
  const full = inCart >= Cart.cap(item);
  li.classList.toggle("sold-out", soldOut);
  li.querySelector("h3").textContent = item.name;
  li.querySelector(".desc").textContent = item.description;
  li.querySelector(".price").textContent = money(item.price_cents);
  const stock = li.querySelector(".stock");
  stock.textContent = soldOut ? "Sold out" : item.stock <= LOW_STOCK ? `Only ${item.stock} left` : `${item.stock} left`;
  stock.classList.toggle("low", !soldOut && item.stock <= LOW_STOCK);
  li.querySelector(".in-cart").textContent = inCart ? `${inCart} in your cart` : "";
  const button = li.querySelector("button.add");
  button.disabled = soldOut || full;
  button.textContent = soldOut ? "Sold out" : full ? "Most you can order" : inCart ? "Add one more" : "Add to cart";
  button.setAttribute("aria-label", soldOut ? `${item.name}: sold out` : `Add ${item.name} to the cart`);
}

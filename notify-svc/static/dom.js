// Building DOM without HTML strings: every piece of text goes in through
// textContent or a text node, never through an HTML parser, so nothing a server
// or a user sends can become markup.

/**
 * An element: `h("li", {class: "line", dataset: {item: id}}, "text", child)`.
 * Props: `class`, `text`, `dataset`, `on<event>` listeners, booleans (set
 * as empty attributes when true, left out when false), other attributes.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** The element with this id (the pages' ids are fixed). */
export const byId = (id) => document.getElementById(id);

/** A `<meta name=...>` value filled in by the server. */
export function meta(name) {
  return document.querySelector(`meta[name="${name}"]`)?.getAttribute("content") ?? "";
}

/** Sets an element's text, and shows it only when there is some. */
export function say(el, text) {
  el.textContent = text ?? "";
  el.hidden = !text;
}

/** A time of day in the browser's locale, e.g. 14:05:09. */
export function timeOfDay(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime())
    ? ""
    : d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** A date and time in the browser's locale. */
export function dateTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime())
    ? ""
    : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

// Checkout: the delivery details form, its validation, and one checkout
// attempt run to a definite answer.
//
// An attempt is one Idempotency-Key with one exact body. It is stored
// before the first POST (see store.js) and retried with the same key after
// a network error, a 5xx or a 429, so a double click, a retry or a reload
// while the request is in flight gets the same order from order-svc,
// never a second one. It ends with an answer: placed (201, or the replay of
// it), or refused (4xx: the details or the cart must change, which makes a
// new attempt with a new key).
import { placeOrder, sleep, NetworkError } from "./api.js";

export const FIELDS = ["name", "address", "phone"];

const REQUIRED = {
  name: "Enter your name.",
  address: "Enter the delivery address.",
  phone: "Enter a phone number for the courier.",
};

// Control characters, which order-svc refuses in every customer field.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** The details as typed. */
export function readDetails(form) {
  return Object.fromEntries(FIELDS.map((f) => [f, form.elements[f].value]));
}

export function fillDetails(form, details) {
  for (const f of FIELDS) if (typeof details?.[f] === "string") form.elements[f].value = details[f];
}

/** An address typed on several lines becomes one line, as order-svc wants it. */
const oneLine = (s) => s.split(/\s*[\r\n]+\s*/).filter(Boolean).join(", ");

/**
 * What is wrong with the form, field by field, with the rules order-svc
 * applies (its 422 stays the last word): required, length, the phone
 * pattern (the browser's own check of the input's `pattern`), no control
 * characters.
 */
export function validate(form) {
  const errors = {};
  for (const f of FIELDS) {
    const input = form.elements[f];
    const value = f === "address" ? oneLine(input.value.trim()) : input.value.trim();
    const max = Number(input.getAttribute("maxlength")) || Infinity;
    if (!value) errors[f] = REQUIRED[f];
    else if ([...value].length > max) errors[f] = `Use at most ${max} characters.`;
    else if (CONTROL.test(value)) errors[f] = "Remove the special characters.";
    else if (input.validity.patternMismatch) errors[f] = input.dataset.patternMessage || "Check this field.";
  }
  return errors;
}

/** Shows each field's message next to it; returns the first invalid input. */
export function showFieldErrors(form, errors) {
  let first = null;
  for (const f of FIELDS) {
    const input = form.elements[f];
    const message = errors[f] ?? "";
    document.getElementById(`${f}-error`).textContent = message;
    if (message) {
      input.setAttribute("aria-invalid", "true");
      first ??= input;
    } else input.removeAttribute("aria-invalid");
  }
  return first;
}

export function clearFieldError(input) {
  if (!FIELDS.includes(input?.name)) return;
  input.removeAttribute("aria-invalid");
  document.getElementById(`${input.name}-error`).textContent = "";
}

/** The body of `POST /api/v1/orders`. */
export function orderBody(details, lines) {
  return {
    customer: {
      name: details.name.trim(),
      address: oneLine(details.address.trim()),
      phone: details.phone.trim(),
    },
    items: lines.map((l) => ({ item_id: l.item_id, quantity: l.quantity })),
  };
}

/**
 * Splits a 422's or 409's `fields` (JSON paths such as `customer.phone`,
 * `items[1].quantity`) into field messages, line messages (by item id, from
 * the body that was sent) and the rest.
 */
export function splitFields(fields, body) {
  const out = { fields: {}, lines: new Map(), other: [] };
  for (const [path, said] of Object.entries(fields ?? {})) {
    const message = sentence(said);
    const customer = path.match(/^customer\.(name|address|phone)$/);
    const line = path.match(/^items\[(\d+)\]/);
    const id = line ? body.items[Number(line[1])]?.item_id : null;
    if (customer) out.fields[customer[1]] = message;
    else if (id) out.lines.set(id, out.lines.has(id) ? `${out.lines.get(id)} ${message}` : message);
    else out.other.push(path === "items" ? message : `${path}: ${message}`);
  }
  return out;
}

/** "must be …" → "Must be …." */
function sentence(text) {
  const t = String(text ?? "").trim();
  return t ? `${t[0].toUpperCase()}${t.slice(1)}${/[.!?]$/.test(t) ? "" : "."}` : t;
}

/** Waits between retries of one attempt, in seconds; then it stops and asks. */
const RETRY_DELAYS = [0.5, 1, 2, 4, 8, 8];

/**
 * Runs `attempt` ({key, body}) until order-svc answers for good. Resolves
 * with `{kind: "placed", order, replayed}`, `{kind: "refused", status, body}`,
 * `{kind: "gave-up"}` (retries exhausted; the attempt stays stored, to be
 * tried again with the same key) or `{kind: "aborted"}`.
 * `waiting({why, seconds})` is told about each retry.
 */
export async function runAttempt(attempt, { signal, waiting }) {
  for (let n = 0; ; n++) {
    let answer = null;
    try {
      answer = await placeOrder(attempt.body, attempt.key, signal);
    } catch (e) {
      if (!(e instanceof NetworkError)) throw e;
    }
    if (signal?.aborted) return { kind: "aborted" };
    if (answer && (answer.status === 201 || answer.status === 200) && answer.body?.tracking_token) {
      return { kind: "placed", order: answer.body, replayed: answer.replayed };
    }
    const transient = !answer || answer.status >= 500 || answer.status === 429 || answer.status === 408;
    if (!transient) return { kind: "refused", status: answer.status, body: answer.body };
    if (n >= RETRY_DELAYS.length) return { kind: "gave-up" };
    const why = !answer ? (navigator.onLine === false ? "offline" : "network")
      : answer.status === 429 ? "busy" : "server";
    const seconds = answer?.retryAfter ?? RETRY_DELAYS[n];
    waiting({ why, seconds });
    await untilOnline(sleep(seconds * 1000, signal), signal);
    if (signal?.aborted) return { kind: "aborted" };
  }
}

/** `wait`, then (when offline) until the browser is online again. */
async function untilOnline(wait, signal) {
  await wait;
  if (navigator.onLine !== false || signal?.aborted) return;
  await new Promise((resolve) => {
    window.addEventListener("online", resolve, { once: true });
    signal?.addEventListener("abort", resolve, { once: true });
  });
}

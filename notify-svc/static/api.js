// order-svc's REST API, as the pages use it. The base URL comes from the
// page (`ORDER_API_URL`; empty: this origin, as behind the chart's Ingress).
import { meta } from "./dom.js";

export const API_BASE = meta("foodchain-order-api").replace(/\/+$/, "");

/** Longest wait for one request before it counts as a network failure. */
const TIMEOUT_MS = 15000;

/** The request never got an answer (offline, refused, reset, timed out). */
export class NetworkError extends Error {}

/**
 * One JSON request. Resolves with `{status, ok, body, retryAfter, replayed}`
 * for every HTTP answer (including 4xx/5xx); rejects with NetworkError when
 * there was none. A 2xx whose body cannot be read also counts as no answer:
 * its content (say, a tracking token) is lost, and only a retry gets it.
 */
export async function call(path, { method = "GET", body, headers = {}, token, signal, cache = "no-store", credentials = "omit" } = {}) {
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(), TIMEOUT_MS);
  const abort = () => timeout.abort();
  signal?.addEventListener("abort", abort);
  const h = { accept: "application/json", ...headers };
  if (body !== undefined) h["content-type"] = "application/json";
  if (token) h.authorization = `Bearer ${token}`;
  try {
    let res;
    try {
      res = await fetch(API_BASE + path, {
        method,
        headers: h,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: timeout.signal,
        cache,
        credentials,
        referrerPolicy: "no-referrer",
      });
    } catch (e) {
      throw new NetworkError(e?.message || "network error");
    }
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      if (res.ok) throw new NetworkError(e?.message || "the answer was cut off");
    }
    return {
      status: res.status,
      ok: res.ok,
      body: data,
      retryAfter: retryAfterSeconds(res.headers.get("retry-after")),
      replayed: res.headers.get("idempotent-replayed") === "true",
    };
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", abort);
  }
}

function retryAfterSeconds(value) {
  const n = Number.parseInt(value ?? "", 10);
  return Number.isFinite(n) && n >= 0 ? Math.min(n, 60) : null;
}

/** A fresh Idempotency-Key: a random UUID (v4). */
export function newKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * The menu. The first read of a page load is the one the HTML preloads
 * (`<link rel="preload" as="fetch" crossorigin>`, started before any module
 * runs), so it must ask the same way: default cache mode and credentials
 * (none go cross-origin either way). Later reads are fresh.
 */
let preloaded = true;
export function getMenu() {
  if (!preloaded) return call("/api/v1/menu");
  preloaded = false;
  return call("/api/v1/menu", { cache: "default", credentials: "same-origin" });
}

export const placeOrder = (body, key, signal) =>
  call("/api/v1/orders", { method: "POST", body, headers: { "idempotency-key": key }, signal });

export const getOrder = (id, token) => call(`/api/v1/orders/${id}`, { token });

export const cancelOrder = (id, token, reason, key) =>
  call(`/api/v1/orders/${id}/cancel`, {
    method: "POST",
    body: reason ? { reason } : {},
    headers: { "idempotency-key": key },
    token,
  });

export const adminOverview = (adminToken, signal) =>
  call("/api/v1/admin/overview", { token: adminToken, signal });

/** A wait that an AbortSignal cuts short. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

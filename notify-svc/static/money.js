// Money is integer cents everywhere (the API's `price_cents`,
// `line_total_cents`, `total_cents`); it becomes text only here, once, in
// the browser's locale, in the deployment's currency (`CURRENCY`).
import { meta } from "./dom.js";

const currency = meta("foodchain-currency") || "EUR";

function formatter() {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency });
  } catch {
    return new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
}

const format = formatter();

/**
 * Integer cents as text, e.g. 1150 → "€11.50" (en) or "11,50 €" (de). The
 * amount goes to Intl as a decimal string, so no binary fraction is ever
 * involved.
 */
export function money(cents) {
  const n = Math.trunc(Number(cents) || 0);
  const abs = Math.abs(n);
  const decimal = `${n < 0 ? "-" : ""}${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, "0")}`;
  return format.format(decimal);
}

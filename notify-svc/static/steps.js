// The tracking flow as a customer reads it: the steps of an order and its
// delivery, in order (notify-svc's timeline entries are `{kind, status}`),
// and the two ways out.

/** Every step of a delivered order, in order, with its label. */
export const FLOW = [
  ["order:created", "Order placed"],
  ["order:confirmed", "Confirmed by the kitchen"],
  ["order:preparing", "Being prepared"],
  ["order:out_for_delivery", "Ready, handed to delivery"],
  ["delivery:waiting_for_pickup", "Waiting for a courier"],
  ["delivery:on_the_way", "On the way to you"],
  ["delivery:delivered", "Dropped off by the courier"],
  ["order:delivered", "Delivered"],
];

/** Exits: where an order can end early. */
export const EXITS = new Map([
  ["order:cancelled", "Cancelled"],
  ["order:rejected", "Rejected by the kitchen"],
]);

/** Order statuses after which nothing happens. */
export const TERMINAL = new Set(["delivered", "cancelled", "rejected"]);

/** Order statuses at which the customer may still cancel. */
export const CANCELLABLE = new Set(["created", "confirmed", "preparing"]);

const HEADLINES = {
  created: "Order placed: waiting for the kitchen to confirm it.",
  confirmed: "The kitchen has confirmed your order.",
  preparing: "Your food is being prepared.",
  out_for_delivery: "Your food is ready and handed to delivery.",
  delivered: "Delivered. Enjoy your meal!",
  cancelled: "This order was cancelled.",
  rejected: "The kitchen could not take this order.",
};

const DELIVERY_HEADLINES = {
  waiting_for_pickup: "Your food is ready: a courier is on the way to pick it up.",
  on_the_way: "Your courier is on the way to you.",
  delivered: "The courier has dropped off your order.",
};

/** `kind:status` of a timeline entry. */
export const stepOf = (entry) => `${entry.kind}:${entry.status}`;

/** One sentence about where an order is. */
export function headline(status, delivery) {
  if (status === "out_for_delivery" && delivery?.status) {
    return DELIVERY_HEADLINES[delivery.status] ?? HEADLINES.out_for_delivery;
  }
  return HEADLINES[status] ?? "Waiting for your order to appear…";
}

/** A status for people: "out for delivery". */
export const human = (status) => String(status ?? "").replaceAll("_", " ");

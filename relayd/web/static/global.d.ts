// Types of relayd-client/global: relay-client.js's exports, and the global it sets.
import { RelayClient as Client } from "./relay-client.js";

export * from "./relay-client.js";

declare global {
  /** Set by relayd-client/global (and by the relay's GET /relay-client.js). */
  var RelayClient: typeof Client;
}

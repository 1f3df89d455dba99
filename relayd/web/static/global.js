// The side-effect entry of the relayd client: everything relay-client.js
// exports, and globalThis.RelayClient for pages that use it without an
// import (what the relay's own GET /relay-client.js also does).
//
//   import "relayd-client/global";

import { RelayClient } from "./relay-client.js";

export * from "./relay-client.js";

globalThis.RelayClient = RelayClient;

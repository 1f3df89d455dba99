// What a front-end developer writes against the package; `tsc --strict`
// must accept it, and must refuse each line marked @ts-expect-error (were the
// types to decay to `any`, those markers would fail the check).
import {
  RelayClient,
  RelayError,
  backoffDelay,
  type AckFrame,
  type ClosedDetail,
  type ConnectionState,
  type ErrorDetail,
  type MessageFrame,
  type WelcomeFrame,
} from "relayd-client";
import "relayd-client/global";

export async function use(): Promise<void> {
  const client = new RelayClient("wss://relay.example.com/ws", {
    id: "alice",
    token: async () => "a token",
    transports: ["websocket", "sse"],
  });
  client.addEventListener("welcome", (event) => {
    const welcome: WelcomeFrame = event.detail;
    const lost: boolean = welcome.lost;
    void lost;
  });
  client.addEventListener("message", (event) => {
    const frame: MessageFrame = event.detail;
    const id: number | null = frame.id;
    void id;
  });
  client.addEventListener("state", (event) => {
    const state: ConnectionState = event.detail;
    void state;
  });
  client.addEventListener("closed", (event) => {
    const { code, reason }: ClosedDetail = event.detail;
    void [code, reason];
  });
  client.addEventListener("error", (event) => {
    const { error, transport }: ErrorDetail = event.detail;
    void [error.message, transport];
  });
  const ack: AckFrame = await client.send({ receiver_id: "bob", content: { text: "hi" } });
  const queued: string[] | undefined = ack.queued;
  await client.send({ broadcast: true, content: 1 });
  try {
    await client.send({ receiver_ids: ["a", "b"], content: null });
  } catch (error) {
    if (error instanceof RelayError) void error.code;
  }
  const delay: number = backoffDelay(3);
  const viaGlobal: typeof RelayClient = globalThis.RelayClient;
  const closeCode: number | null = client.closeCode;
  void [queued, delay, viaGlobal, closeCode];
  client.close();

  // @ts-expect-error: a send needs a target
  await client.send({ content: 1 });
  // @ts-expect-error: exactly one target
  await client.send({ receiver_id: "bob", broadcast: true, content: 1 });
  // @ts-expect-error: the state event's detail is a string
  client.addEventListener("state", (event) => { const n: number = event.detail; void n; });
  // @ts-expect-error: transports are "websocket" and "sse"
  new RelayClient("ws://x/ws", { transports: ["long-polling"] });
  // @ts-expect-error: the close code is a number
  client.addEventListener("closed", (event) => { const s: string = event.detail.code; void s; });
}

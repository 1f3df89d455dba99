"""The transports: WebSocket (Autobahn) and SSE, one connection lifecycle shared by both."""

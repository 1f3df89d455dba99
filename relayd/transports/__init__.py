"""The transports: WebSocket (Autobahn) and legacy SSE, thin adapters over the core."""

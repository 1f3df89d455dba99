"""Integration tests of the SSE transport (``GET /events``) on a real relay."""

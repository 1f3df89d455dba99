"""The HTTP side: plumbing, the gate in front of the transports, the API, static pages, metrics and access lines."""

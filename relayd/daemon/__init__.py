"""Running it: options, the composition root (``makeService``), logging, sd_notify and the token CLI."""

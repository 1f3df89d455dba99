"""The transport-free core: the relay, its sessions and registry, and the ports it talks through."""

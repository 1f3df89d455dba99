"""
The transport-free core: the registry of sessions, the relay that numbers
nothing itself but asks its broker, the replay rule, and the policies
(tokens, origins, rate limits). Nothing here imports twisted.web, Autobahn,
txredisapi or an outer layer; the clock is always injected.
"""

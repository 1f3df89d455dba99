"""
relayd's side-by-side benchmark: ``python -m relayd.bench``.

One command starts relayd (``twistd -n relay``, in memory, with ``--store``
and on Redis) and a minimal aiohttp relay kept here as the yardstick
(:mod:`relayd.bench.reference_aiohttp`), pins every server to one CPU and
the load generator to the other, and runs the scenarios of issue 8 (memory
and CPU of idle connections, handshakes, POST→delivery at max and at fixed
offered rates, batches, broadcast, the store and Redis rows) and, when
asked, the soak of issue 11. It prints one table of figures with the
relayd/aiohttp ratio and the target beside each, and writes JSON and plots
on request. Figures only: it asserts nothing.
"""

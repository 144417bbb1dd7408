"""On-demand VMs: the summoning part of summoner.

Modules, each with one job:

- ``config``: CLI flags and the settings object;
- ``hosts``: on-demand declarations in zone files (``split_on_demand``);
- ``spec``: what one service's VM looks like (image manifest + zone overrides);
- ``domxml``: libvirt domain XML and summoner's metadata in it;
- ``libvirt_backend``: every libvirt call, on one worker thread, plus events;
- ``probe``: the HTTP readiness probe;
- ``service``: per-service state machine, single-flight boots, capacity;
- ``reaper``: idle detection and stopping;
- ``stage``: the resolution-chain stage;
- ``app``: ``build()`` ties them together for the server.
"""

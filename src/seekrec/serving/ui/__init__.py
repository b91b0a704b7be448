"""The web console at ``/ui``: static pages (``static/``, shipped as package data) and the JSON endpoints
under ``/ui/api`` that the pages read. Everything runs inside ``seekrec serve``: no build step, no CDN.

Pages call the public API (``/recommend``, ``/events``, ``/experiments``) where it answers what they need,
and ``/ui/api`` only for what the API lacks (item titles, registry versions, a recent-window summary of the
metrics), so the console exercises the same routes and keys a client does (docs/console.md).
"""

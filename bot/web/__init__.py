"""The web UI: a chat page at ``/`` and an admin dashboard, served by ``kbot serve``.

No build step: plain HTML, CSS and ES modules under ``static/``, charts drawn as SVG by
``static/charts.js``. ``chat.py`` is the web platform's adapter, ``insights.py`` the dashboard's
queries, ``review.py`` its review queue of corrections, ``auth.py`` admin and visitor identity.
"""

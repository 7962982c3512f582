"""The hosted payment page: what the customer sees at /i/<invoice id> (routes in watcherd/http/checkout.py).

public.py    the invoice as the page may show it (no metadata), and what state to show
strings.py   one strings file per language (watcherd/http/locales/<code>.json), chosen by Accept-Language
qr.py        the payment URI as an SVG QR code (segno), cached
render.py    the HTML, built once per request from precomputed parts: no template engine, no file reads
checkout.css, checkout.js   served from the daemon under content-hashed names (no CDN, no third party)
"""

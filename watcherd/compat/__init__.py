"""The compatible APIs' JSON: watcherd's invoices and events as BTCPay's Greenfield API and the BitPay-style
invoice API show them (pure mappings from the native invoice JSON), and the event listeners that queue their
webhook and notification deliveries. The HTTP routes are in watcherd/http/greenfield.py and bitpay.py."""

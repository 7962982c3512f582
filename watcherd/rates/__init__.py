"""Exchange rates: the `[rates]` sources fetched in the background, quoted as exact fractions.

    book = RateBook(config.rates, assets={"BTC", "ETH", "USDC"}, clock=time.time)
    await book.run()                 # the background refresh (the daemon's task group)
    book.quote("USD", "BTC")         # Fraction: USD per one whole BTC, spread applied; or RatesUnavailable

config.py holds the table's dataclass (built by watcherd/config, imported by nothing else of the config code),
sources.py one class per exchange's real endpoint, book.py the median, freshness, spread and reporting. This
package imports only the core, the exception family and the metrics.
"""

from watcherd.rates.book import RateBook
from watcherd.rates.config import SOURCE_URLS, RatesConfig

__all__ = ["SOURCE_URLS", "RateBook", "RatesConfig"]

"""Standing questions ("tell me when ..."): yes/no questions evaluated after each window, alerts when they fire.

- :mod:`~omnizip_stream.watch.spec`: a question's settings (``WatchSpec``), their limits, debounce/cooldown state.
- :mod:`~omnizip_stream.watch.evaluate`: K questions of a stream in one forward over its cache (cache untouched).
- :mod:`~omnizip_stream.watch.registry`: a stream's questions (``StreamSession.watches``), scheduling, alerts.
- :mod:`~omnizip_stream.watch.log`: the per-stream JSONL alert log (written before publishing).
- :mod:`~omnizip_stream.watch.mqtt`: ``omnizip/<id>/alerts`` and ``omnizip/<id>/watch``.
- :mod:`~omnizip_stream.watch.setup`: from the server file / ``--watch``; the console's alert line.
"""

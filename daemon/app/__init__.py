"""The entry points: the ``tolk`` command, ``tolk run`` (the supervisor), the demo, install,
the device listing. The only floor that may import ``services``; the runtime under ``daemon/``
below it never does (tests/test_layout.py walks the imports)."""

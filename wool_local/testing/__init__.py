"""The pytest plugin's machinery (``pytest --wool N``); :mod:`wool_local.pytest_plugin` is
the entry point pytest loads, and imports these modules only when ``--wool`` is used.

* :mod:`.controller`: the units of work, the pool, the replay of the workers' reports.
* :mod:`.worker`: what runs in a worker: a unit's items, their reports spooled to a file.
* :mod:`.spool`: the framing of those reports.
* :mod:`.fixtures`: ``worker_id`` and ``testrun_uid`` when pytest-xdist is not there.
"""

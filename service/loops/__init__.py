"""The background loops: each is a `Loop` the lifespan starts, and on stop cancels, then drains.

A new loop (webhook delivery, asset copying, provider health) takes `(runtime, gateway)` and joins the list
in `service/app.py`.
"""

from __future__ import annotations

from service.loops.archiver import Archiver
from service.loops.base import Loop, Watcher
from service.loops.deliverer import Deliverer
from service.loops.dispatcher import Dispatcher
from service.loops.poller import Poller

__all__ = ["Archiver", "Deliverer", "Dispatcher", "Loop", "Poller", "Watcher"]

"""EduRanker's four services: reranker, collector, aggregator, trainer.

Progress bars are for terminals. In a service, tqdm's global lock deadlocked a reranker: a model
load's bar, collected by the garbage collector on the event loop, waited for the lock its monitor
thread was waiting for too, and every search after it hung. Imported before any service module
(and so before tqdm, which reads these at import), they turn the bars off.
"""

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

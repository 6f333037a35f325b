"""One lock for importing the model code in a process (imports nothing heavy itself).

transformers' modules are lazy: two threads that first touch them at once can each see a half-made
module ("module 'transformers' has no attribute 'AutoConfig'"). Loading a backbone, a daemon's warm-up and
its training services' first calls all import under this lock; re-entrant, so a load inside an import
holding it does not wait for itself.
"""

from __future__ import annotations

import threading

MODEL_CODE = threading.RLock()

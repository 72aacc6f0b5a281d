"""Server-side timing hook for the NVFlare benchmark (shipped in the job's custom/ folder)."""

import json
import time

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType


class RoundTimer(FLComponent):
    """Appends {"ev": "start"|"end", "round": r, "t": unix_time} lines to `path`.
    start = ROUND_STARTED (before the global model is sent), end = AFTER_AGGREGATION."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _write(self, ev, rnd):
        with open(self.path, "a") as f:
            f.write(json.dumps({"ev": ev, "round": rnd, "t": time.time()}) + "\n")

    def handle_event(self, event_type: str, fl_ctx):
        if event_type == AppEventType.ROUND_STARTED:
            self._write("start", int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, -1)) + 1)
        elif event_type == AppEventType.AFTER_AGGREGATION:
            self._write("end", int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, -1)) + 1)
        elif event_type == EventType.END_RUN:
            self._write("end_run", -1)

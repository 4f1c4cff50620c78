"""TensorRT backend: Polygraphy's TrtRunner over the engines ``reroute build`` wrote (GPU only)."""

from __future__ import annotations

import ctypes

from .errors import RerouteError

from .plugins import default_library_path
from .session_backend import GRAPH_NAMES, SessionBackend
from .trt_build import engine_dir


class TrtBackend(SessionBackend):  # pragma: no cover - needs TensorRT and a GPU
    name = "tensorrt"

    def __init__(self, artifact, plugins: bool = True, plugin_library: str | None = None,
                 low_memory: bool = False):
        from .trt_build import require_tensorrt

        super().__init__(artifact, low_memory)
        require_tensorrt()
        form = "plugins" if plugins else "no-plugins"
        if form not in artifact.manifest.get("engines", {}):
            raise RerouteError(f"{artifact.root} has no {form} TensorRT engines: run `reroute build "
                               f"{artifact.root} {'--plugins' if plugins else '--no-plugins'}` first")
        if plugins:  # the library registers its creators when loaded
            ctypes.CDLL(str(plugin_library or artifact.manifest["engines"][form]["plugin_library"]
                            or default_library_path()), mode=ctypes.RTLD_GLOBAL)
        self.plans = {g: engine_dir(artifact, plugins) / f"{g}.plan" for g in GRAPH_NAMES}
        self._open_all(GRAPH_NAMES)

    def _open(self, graph: str):
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        return TrtRunner(EngineFromBytes(BytesFromPath(str(self.plans[graph]))), name=f"tensorrt-{graph}")

    def comparator_runner(self, graph: str):
        """A second runner over the engine: in low-memory mode the open ones of the decoder go first."""
        self._make_room_for(graph)
        return self._open(graph)

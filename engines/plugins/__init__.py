"""TensorRT plugins for the ``reroute`` token-pool ops (C++ IPluginV3 + CUDA; see docs/PLUGINS.md).

The sources are in ``csrc/``; ``build.sh`` builds them with CMake on a GPU server into
``build/``. Nothing here imports TensorRT: this module only names the plugins and their library.
"""

from __future__ import annotations

from pathlib import Path

PLUGIN_NAMESPACE = "reroute"
PLUGIN_VERSION = "1"
PLUGIN_NAMES = ("PoolSelect", "PoolGather", "PoolScatter")
# Dynamic-N_v forms (Qwen2.5-VL): sizes arrive as tensors, see engines/plugin_graph.py and csrc/pool_plugins_dynamic.*
DYNAMIC_PLUGIN_NAMES = ("PoolSelectDynamic", "PoolGatherDynamic", "PoolScatterDynamic")

PLUGIN_DIR = Path(__file__).resolve().parent
BUILD_DIR = PLUGIN_DIR / "build"


def default_library_path(dynamic: bool = False) -> Path:
    """Where ``build.sh`` puts the plugin library (it may not exist yet).

    ``dynamic=False``: ``libreroute_plugins.so``, which registers its creators when loaded
    (ctypes / dlopen / LD_PRELOAD, Polygraphy ``--plugins``, trtexec ``--staticPlugins``, Triton).
    ``dynamic=True``: ``libreroute_plugins_dynamic.so``, for ``IPluginRegistry.load_library`` /
    trtexec ``--dynamicPlugins`` (which reject a library whose creators are already registered).
    """
    name = "libreroute_plugins_dynamic.so" if dynamic else "libreroute_plugins.so"
    return BUILD_DIR / name

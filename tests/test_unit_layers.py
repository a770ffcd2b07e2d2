"""The layering rules that imports can show, read from the source of every aisfs module."""

from __future__ import annotations

import ast
from pathlib import Path

import aisfs

PACKAGE = Path(aisfs.__file__).parent
# The modules that are or build the HTTP side: the mount and the CLI (and its __main__) build a
# client, aio runs it.
HTTP_SIDE = {"transport", "httpreply", "httpconn", "trioconn", "inline", "client",
             "archive_calls", "aio", "mount", "cli", "__main__"}


def imports_of(module: str) -> set[str]:
    """Every module ``module`` imports, anywhere in it (relative imports as ``aisfs.x``)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("aisfs." + node.module if node.module else "aisfs") if node.level else (
                node.module or "")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def all_modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_only_the_transport_imports_requests_or_urllib3() -> None:
    """The transport is transport.py, its answers (httpreply.py) and its kept-alive connections
    (httpconn.py)."""
    importers = [m for m in all_modules()
                 if any(name.split(".")[0] in ("requests", "urllib3") for name in imports_of(m))]
    assert importers == ["httpconn", "httpreply", "transport"]


def test_the_layers_reach_ais_only_through_the_interface() -> None:
    """Namespace, reader, writer, fs and everything else below the mount are typed against
    ``aisapi`` and never import the HTTP side, so any implementation can be passed in."""
    http_side = {f"aisfs.{m}" for m in HTTP_SIDE | {"routing", "bodyrecv"}}
    offenders = {m: sorted(imports_of(m) & http_side) for m in all_modules()
                 if m not in HTTP_SIDE and imports_of(m) & http_side}
    assert offenders == {}


def test_only_the_fuse_adapter_imports_pyfuse3() -> None:
    """The adapter is fs.py (the handlers), fuse_attrs.py (the ``EntryAttributes`` the handlers
    answer with: part of the adapter, in a module of its own to keep fs.py small),
    kernelnotify.py (the kernel's caches, notified from helper threads), mount.py (the
    session), open_reply.py (the FOPEN_NOFLUSH answer to read-only opens) and request_wait.py
    (pyfuse3's wait for the next request)."""
    importers = [m for m in all_modules()
                 if any(name.split(".")[0] == "pyfuse3" for name in imports_of(m))]
    assert importers == ["fs", "fuse_attrs", "kernelnotify", "mount", "open_reply",
                         "request_wait"]


def test_only_aio_leaves_the_trio_thread() -> None:
    """Every other blocking call goes through ``AisApi.run_blocking``."""
    callers = [m for m in all_modules()
               if any(isinstance(node, ast.Attribute) and node.attr == "to_thread"
                      for node in ast.walk(ast.parse((PACKAGE / f"{m}.py").read_text())))]
    assert callers == ["aio"]


def test_the_namespace_imports_nothing_from_the_open_files_layer() -> None:
    """The open-files layer calls the namespace; the namespace only asks it, through the
    ``FilesBeingWritten`` protocol of ``written.py``."""
    above = {"aisfs.openfiles", "aisfs.handles", "aisfs.writer", "aisfs.fs", "aisfs.mount"}
    below = ("namespace", "listings", "metacache", "localdirs", "written")
    assert {m: sorted(imports_of(m) & above) for m in below if imports_of(m) & above} == {}

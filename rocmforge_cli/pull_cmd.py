"""`rocmforge pull REF` and `rocmforge rm REF`: fetch a model ahead of use, or delete a fetched one."""

from __future__ import annotations


def pull(ref: str) -> None:
    from rocmforge_cli.common import FetchProgress
    from rocmforge_core import sources, store

    ui = FetchProgress(ref.lower() if ref.lower() in store.KNOWN_MODELS else ref)
    try:
        line = sources.pull(ref, progress=ui)
    finally:
        ui.close(None)
    print(line)


def rm(ref: str) -> None:
    from rocmforge_core import sources

    print(sources.remove(ref))

"""`rocmforge models`: the known model names, their cache paths and sizes, and whether they are downloaded."""

from __future__ import annotations

import json
import sys


def run(json_out: bool) -> None:
    from rocmforge_core import store

    entries = store.list_models()
    if json_out:
        print(json.dumps(entries, indent=2))
        return
    _print_table(entries, store)


def _print_table(entries: list[dict], store) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(caption=f"cache: {store.cache_dir()}  (ROCMFORGE_HOME overrides)", caption_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("description")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("cached", no_wrap=True)
    table.add_column("path", overflow="fold")
    for entry in entries:
        name = entry["name"]
        default = " (default)" if name == store.DEFAULT_MODEL else ""
        table.add_row(name + default, store.KNOWN_MODELS[name].description, f"{entry['size'] / 1e6:.1f} MB",
                      "yes" if entry["cached"] else "no", entry["path"])
    Console(file=sys.stdout).print(table)

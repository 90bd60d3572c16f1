"""`rocmforge models`: what each place holds — known names, rocmforge's cache, the Hugging Face cache,
ollama's store and LM Studio's folders."""

from __future__ import annotations

import json
import sys


def run(json_out: bool) -> None:
    from rocmforge_core import sources

    entries = sources.list_models()
    if json_out:
        print(json.dumps(entries, indent=2))
        return
    _print_table(entries)


def _print_table(entries: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from rocmforge_core import hub, local_stores, store

    lmstudio = " and ".join(map(str, local_stores.lmstudio_dirs()))
    caption = (f"rocmforge: {store.cache_dir()} (ROCMFORGE_HOME)  HF: {hub.cache_dir()} (HF_HUB_CACHE, HF_HOME)\n"
               f"ollama: {local_stores.ollama_dir()} (OLLAMA_MODELS)  LM Studio: {lmstudio} (LMSTUDIO_MODELS)")
    table = Table(caption=caption, caption_justify="left")
    table.add_column("name", style="bold", overflow="fold")
    table.add_column("source", no_wrap=True)
    table.add_column("description")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("cached", no_wrap=True)
    table.add_column("path", overflow="fold")
    for entry in entries:
        name = entry["name"]
        known = store.KNOWN_MODELS.get(name) if entry["source"] == "known" else None
        default = " (default)" if known and name == store.DEFAULT_MODEL else ""
        table.add_row(name + default, entry["source"], known.description if known else "",
                      f"{entry['size'] / 1e6:.1f} MB", "yes" if entry["cached"] else "no", entry["path"])
    Console(file=sys.stdout).print(table)

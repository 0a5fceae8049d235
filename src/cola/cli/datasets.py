"""`cola datasets`: the catalog, the embedded offline pool and Stage 1's default reference sets."""

from __future__ import annotations

import argparse


def run_datasets(_args: argparse.Namespace) -> int:
    from cola.data.catalog import CAPABILITIES, CATALOG, EMBEDDED_SOURCES
    from cola.stages.mixture import default_reference

    print(f"{'name':16} {'capability':12} {'hub id':36} description")
    for entry in CATALOG.values():
        hub = entry.hub_id + (f" [{entry.config}]" if entry.config else "")
        print(f"{entry.name:16} {entry.capability:12} {hub:36} {entry.description}")
    for name in EMBEDDED_SOURCES:
        cap = name.removeprefix("embedded").lstrip("-") or "general+math+code"
        print(f"{name:16} {cap:12} {'(offline, ships with cola)':36} embedded offline pool")
    print("\nAny local .jsonl/.json/.parquet/.csv/.txt file or hub id works too: "
          "PATH[@CAPABILITY][#FIELD+FIELD]")
    print("A source without @CAPABILITY or a catalog schema gets its capability from Stage 1 (the reference set its "
          "texts match best).")
    print(f"\nStage 1 default reference sets (override with --reference CAPABILITY=PATH):\n"
          f"{'capability':12} {'reference':18} offline")
    for capability in CAPABILITIES:
        reference = default_reference(capability) or "-"
        offline = ("yes (embedded)" if reference.startswith("embedded") else
                   f"no: hub dataset; offline, give --reference {capability}=PATH")
        print(f"{capability:12} {reference:18} {offline}")
    print("general: held-out records of the datasets' free-text prose sources come first (cola.stages.mixture."
          "general_reference_sources); the embedded part is the fallback")
    return 0

"""Crash-test child: appends batches forever, printing ``k offset...`` once each append returns.

A printed line is an acknowledgement: the parent SIGKILLs this process at a random moment and then
checks that every printed offset still holds batch ``k``'s events. Usage: append_worker.py URL SIZE FIRST_K.
"""

from __future__ import annotations

import sys

from seekrec.online.event_log import Event
from seekrec.online.factory import open_event_log


def main(url: str, batch_size: int, first_k: int) -> None:
    log = open_event_log(url)
    k = first_k
    while True:
        batch = [Event(f"u{k}", f"i{k}-{j}", float(k), value=float(j)) for j in range(batch_size)]
        offsets = log.append(batch)
        print(k, *offsets, flush=True)
        k += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

"""The shared-memory backend: one job's arena, mapped by every worker, and the groups in it.

- ``arena``: the job's shared-memory file and its allocator (``Arena``, ``ArenaFullError``);
- ``sync``: step counters polled with a bounded wait; ``channels``: point-to-point queues;
- ``config``: the sizes of a group's buffers (``ShmConfig``);
- ``communicator``: ``ShmCommunicator``, a group of ranks and its control block;
- ``dispatch``: the one table that picks the algorithm of each collective call;
- ``reference`` and ``ring``: the readable algorithms that define the results, bit for bit;
- ``fast``: the faster paths beside them, each giving the reference's bits.
"""

from __future__ import annotations

from .arena import Arena, ArenaFullError
from .communicator import ShmCommunicator, world_communicator
from .config import ShmConfig

__all__ = ["Arena", "ArenaFullError", "ShmCommunicator", "ShmConfig", "world_communicator"]
